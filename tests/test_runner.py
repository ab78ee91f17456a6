"""The job runner as the GUI uses it: start, tail, stop, crash, kill, reattach."""
import dataclasses
import json
import time
from pathlib import Path

import psutil
import pytest

from core.config import ConfigError
from core.jobs import runner
from core.jobs.cli import main as cli_main
from core.jobs.registry import JOBS
from core.jobs.run_folder import RunFolder, Tail
from core.jobs.runner import list_runs, request_stop, run_state, start_job


def wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_job_runs_to_done_and_is_tailed(small_dataset, studio_home):
    run_dir = start_job("scan", {"train_data_dir": [str(small_dataset)]}, name="my scan")
    assert run_dir.parent == studio_home / "runs" and run_dir.name.startswith("scan-my-scan-")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["job"] == "scan" and config["values"]["train_data_dir"] == [str(small_dataset)]
    wait_for(lambda: run_state(run_dir) == "done")
    log = RunFolder(run_dir).log_tail()
    lines = log.read_lines()
    assert any("scan: started" in line for line in lines) and any("scan: done" in line for line in lines)
    assert log.read_lines() == []  # nothing new since the last read
    events = RunFolder(run_dir).read_events()
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["step"] == progress[-1]["total"] == 12
    assert events[-1]["event"] == "done"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["exit_code"] == 0 and status["pid"] > 0
    assert json.loads((run_dir / "report.json").read_text())["effective_images"] == 36


def test_tail_returns_only_whole_lines(tmp_path):
    path = tmp_path / "log.txt"
    path.write_bytes(b"one\ntw")
    tail = Tail(path)
    assert tail.read_lines() == ["one"]
    with open(path, "ab") as f:
        f.write("o \u00e9\nthree\n".encode())
    assert tail.read_lines() == ["two \u00e9", "three"]


def test_invalid_values_start_nothing(studio_home):
    with pytest.raises(ConfigError, match="train_data_dir"):
        start_job("scan", {"train_data_dir": []})
    assert not (studio_home / "runs").exists() or not any((studio_home / "runs").iterdir())


def test_stop_is_graceful(small_dataset):
    run_dir = start_job("scan", {"train_data_dir": [str(small_dataset)]})
    request_stop(run_dir)  # before the job even looks: it must stop at its first check
    wait_for(lambda: run_state(run_dir) == "stopped")
    assert RunFolder(run_dir).read_events()[-1]["event"] == "stopped"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["complete"] is False
    assert json.loads((run_dir / "status.json").read_text())["exit_code"] == 0


def test_failure_exits_1_with_traceback_in_log(tmp_path):
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    run_dir = start_job("demo", {"out": str(out)})
    wait_for(lambda: run_state(run_dir) == "error")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["exit_code"] == 1
    assert "Traceback" in (run_dir / "log.txt").read_text()
    error = RunFolder(run_dir).read_events("error")[-1]
    assert str(out) in error["message"]
    assert (out / "mine.txt").read_text() == "user data"


@pytest.mark.parametrize("error, reason", [(MemoryError(), "ran out of memory"), (KeyError(), "log.txt has the "
                                                                                       "traceback")])
def test_a_failure_without_a_message_still_gives_a_reason(tmp_path, error, reason):
    """A MemoryError (as a cache job hit on an upscale bomb) has no text: the error says what happened."""
    from core.jobs.protocol import execute

    def fail(cfg, ctx):
        raise error

    assert execute("scan", None, tmp_path / "run", lambda: fail) == 1
    message = RunFolder(tmp_path / "run").read_events("error")[-1]["message"]
    assert message.startswith(type(error).__name__ + ": ") and reason in message


def _running_process(run_dir: Path) -> psutil.Process:
    wait_for(lambda: json.loads((run_dir / "status.json").read_text()).get("state") == "running")
    return psutil.Process(json.loads((run_dir / "status.json").read_text())["pid"])


def test_reattach_after_gui_restart_then_stop(small_dataset):
    run_dir = start_job("scan", {"train_data_dir": [str(small_dataset)]})
    proc = _running_process(run_dir)
    proc.suspend()  # hold the job mid-run
    try:
        runner._children.clear()  # what a restarted GUI knows: only the run folders
        runs = list_runs("scan")
        assert [r.run_dir for r in runs if r.state == "running"] == [run_dir]
        request_stop(run_dir)
    finally:
        proc.resume()
    wait_for(lambda: run_state(run_dir) == "stopped")


def set_stop_grace(monkeypatch, job: str, seconds: float) -> None:
    monkeypatch.setitem(JOBS, job, dataclasses.replace(JOBS[job], stop_grace_s=seconds))


def _ended(proc: psutil.Process) -> bool:
    return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def test_kill_after_grace_and_dead_job_is_reported(stuck_job, monkeypatch):
    run_dir, proc = stuck_job
    request_stop(run_dir)
    set_stop_grace(monkeypatch, "scan", 60)
    assert runner.enforce_stop(run_dir) is False
    set_stop_grace(monkeypatch, "scan", 0)
    assert runner.enforce_stop(run_dir) is True
    assert _ended(proc)
    assert run_state(run_dir) == "killed"


def test_command_line_stop_waits_the_grace_period_then_ends_the_job(stuck_job, monkeypatch, capsys):
    run_dir, proc = stuck_job
    set_stop_grace(monkeypatch, "scan", 0.5)
    started = time.monotonic()
    assert cli_main(["stop", str(run_dir), "--wait"]) == 0
    assert time.monotonic() - started >= 0.5
    assert _ended(proc) and run_state(run_dir) == "killed"
    assert RunFolder(run_dir).stop_requested()
    assert capsys.readouterr().out.strip().endswith(f"{run_dir}: killed")
    assert cli_main(["stop", str(run_dir)]) == 0 and "not running (killed)" in capsys.readouterr().out


def test_command_line_stop_without_wait_only_asks(small_dataset):
    run_dir = start_job("scan", {"train_data_dir": [str(small_dataset)]})
    proc = _running_process(run_dir)
    proc.suspend()  # holds it: the request must be seen once it runs again
    try:
        assert cli_main(["stop", str(run_dir)]) == 0
        assert RunFolder(run_dir).stop_requested() and proc.is_running()
    finally:
        proc.resume()
    wait_for(lambda: run_state(run_dir) == "stopped")
    assert cli_main(["stop", str(run_dir / "missing")]) == 2
