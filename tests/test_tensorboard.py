"""core/jobs/tensorboard.py: a real TensorBoard server per run folder, on 127.0.0.1 only."""
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import psutil
import pytest

from core.fsutil import REPO_ROOT
from core.jobs import tensorboard
from core.jobs.tensorboard import start_tensorboard, stop_all, stop_tensorboard


@pytest.fixture
def run_dir(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "train-demo"
    writer = SummaryWriter(str(run / "tensorboard"))
    for step in range(3):
        writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.close()
    return run


@pytest.fixture(autouse=True)
def no_servers_left():
    yield
    stop_all()


def listening_addresses(pid: int) -> set[str]:
    """IP addresses the process and its children listen on."""
    parent = psutil.Process(pid)
    return {conn.laddr.ip for proc in [parent, *parent.children(recursive=True)]
            for conn in proc.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN}


def non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def test_serves_the_run_on_loopback_only_then_stops(run_dir):
    url = start_tensorboard(run_dir)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
    with urllib.request.urlopen(url + "data/runs", timeout=30) as response:
        assert response.status == 200

    proc = tensorboard._servers[str(run_dir.resolve())][0]
    assert start_tensorboard(run_dir) == url  # the same server, not a second one
    assert tensorboard._servers[str(run_dir.resolve())][0] is proc
    assert listening_addresses(proc.pid) == {"127.0.0.1"}
    other = non_loopback_ipv4()
    if other:
        with pytest.raises(OSError):
            socket.create_connection((other, port_of(url)), timeout=2).close()
    assert (run_dir / "tensorboard.log").exists()

    assert stop_tensorboard(run_dir) is True
    assert proc.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port_of(url)), timeout=2).close()
    assert stop_tensorboard(run_dir) is False


def test_servers_do_not_outlive_the_process_that_started_them(run_dir):
    script = textwrap.dedent(f"""
        from core.jobs.tensorboard import _servers, start_tensorboard
        url = start_tensorboard({str(run_dir)!r})
        proc = next(iter(_servers.values()))[0]
        print(url, proc.pid, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    url, pid = out.stdout.split()
    deadline = time.time() + 10
    while psutil.pid_exists(int(pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(int(pid))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port_of(url)), timeout=2).close()


def test_run_without_logs_is_refused(tmp_path):
    (tmp_path / "scan-run").mkdir()
    with pytest.raises(ValueError, match="no TensorBoard logs"):
        start_tensorboard(tmp_path / "scan-run")


def fake_server(script: str):
    """A stand-in for TensorBoard's command line (gets the port as its only argument)."""
    return lambda run_dir, port: [sys.executable, "-c", script, str(port)]


def test_server_that_exits_reports_its_log(run_dir, monkeypatch):
    monkeypatch.setattr(tensorboard, "tensorboard_command",
                        fake_server("import sys; print('address already in use'); sys.exit(3)"))
    with pytest.raises(RuntimeError) as err:
        start_tensorboard(run_dir)
    message = str(err.value)
    assert "train-demo" in message and "exited with code 3" in message
    assert "address already in use" in message and "tensorboard.log" in message
    assert not tensorboard._servers


def test_server_that_never_listens_times_out_and_is_stopped(run_dir, monkeypatch):
    monkeypatch.setattr(tensorboard, "tensorboard_command",
                        fake_server("import time; print('loading', flush=True); time.sleep(60)"))
    started = time.time()
    with pytest.raises(RuntimeError, match="did not answer within 1 s") as err:
        start_tensorboard(run_dir, timeout_s=1)
    assert "loading" in str(err.value)
    assert time.time() - started < 30
    assert not tensorboard._servers


def test_stop_all_stops_every_server(tmp_path, monkeypatch):
    listen = "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); " \
             "s.listen(); time.sleep(60)"
    monkeypatch.setattr(tensorboard, "tensorboard_command", fake_server(listen))
    runs = [tmp_path / name for name in ("a", "b")]
    for run in runs:
        (run / "tensorboard").mkdir(parents=True)
    urls = [start_tensorboard(run) for run in runs]
    assert len(set(urls)) == 2
    procs = [proc for proc, _ in tensorboard._servers.values()]
    stop_all()
    assert not tensorboard._servers and all(proc.poll() is not None for proc in procs)
