"""TensorBoard for a training run's logs (its run folder's tensorboard/), served on 127.0.0.1 only.

One server per run folder, started on demand and kept in a small registry; every server this
process started is stopped when it exits.
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from core.jobs.run_folder import RunFolder

HOST = "127.0.0.1"
_servers: dict[str, tuple[subprocess.Popen, str]] = {}  # run folder -> (process, URL)
_lock = threading.Lock()  # two clicks at once start one server


def has_tensorboard_logs(run_dir: str | os.PathLike) -> bool:
    return RunFolder(run_dir).tensorboard_dir.is_dir()


def tensorboard_command(run_dir: str | os.PathLike, port: int) -> list[str]:
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(RunFolder(run_dir).tensorboard_dir),
            "--host", HOST, "--port", str(port)]


def start_tensorboard(run_dir: str | os.PathLike, timeout_s: float = 60.0) -> str:
    """Start TensorBoard for the run (or find the one already serving it); returns its URL.

    Raises ValueError for a run without TensorBoard logs, RuntimeError if the server exits or
    does not answer within `timeout_s` (with the last lines of the run's tensorboard.log)."""
    run_dir = Path(run_dir).resolve()
    if not has_tensorboard_logs(run_dir):
        raise ValueError(f"{run_dir.name}: this run has no TensorBoard logs (only training runs write them)")
    with _lock:
        running = _servers.get(str(run_dir))
        if running and running[0].poll() is None:
            return running[1]
        port = _free_port()
        proc = _launch(run_dir, port)
        url = f"http://{HOST}:{port}/"
        _servers[str(run_dir)] = (proc, url)
        try:
            _wait_until_listening(proc, port, timeout_s)
        except TimeoutError:
            stop_tensorboard(run_dir)
            raise RuntimeError(_failure(run_dir, f"did not answer within {timeout_s:.0f} s")) from None
        except ChildProcessError:
            _servers.pop(str(run_dir), None)
            raise RuntimeError(_failure(run_dir, f"exited with code {proc.returncode}")) from None
        return url


def stop_tensorboard(run_dir: str | os.PathLike) -> bool:
    """Stop the run's TensorBoard server; False if none was running."""
    entry = _servers.pop(str(Path(run_dir).resolve()), None)
    if entry is None or entry[0].poll() is not None:
        return False
    _kill_tree(entry[0].pid)
    entry[0].wait(timeout=10)
    return True


def stop_all() -> None:
    for run_dir in list(_servers):
        stop_tensorboard(run_dir)


atexit.register(stop_all)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _launch(run_dir: Path, port: int) -> subprocess.Popen:
    """The server process, in its own process group (no Ctrl+C from the GUI's console)."""
    detach = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
              if os.name == "nt" else {"start_new_session": True})
    with open(RunFolder(run_dir).tensorboard_log, "wb") as log:
        return subprocess.Popen(tensorboard_command(run_dir, port), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, **detach)


def _wait_until_listening(proc: subprocess.Popen, port: int, timeout_s: float) -> None:
    """Returns once the port accepts connections; ChildProcessError if the process exits first,
    TimeoutError after `timeout_s` (TensorBoard takes a few seconds to import)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChildProcessError()
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError()


def _failure(run_dir: Path, what: str, lines: int = 15) -> str:
    run = RunFolder(run_dir)
    log = run.tensorboard_log
    tail = run.text_tail(log).strip().splitlines()[-lines:]
    return f"TensorBoard for {run_dir.name} {what}. Last lines of {log}:\n" + "\n".join(tail or ["(empty)"])


def _kill_tree(pid: int) -> None:
    """Stop the server and its data-loading helper process."""
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
