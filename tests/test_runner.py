"""The job runner as the GUI uses it: start, tail, stop, crash, kill, reattach."""
import json
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from core.config import ConfigError
from core.jobs import runner
from core.jobs.runner import Tail, list_runs, request_stop, run_state, start_job


def wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


@pytest.fixture
def small_dataset(tmp_path):
    folder = tmp_path / "data" / "3_cats"
    folder.mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (64 + i, 48), (i * 20, 0, 0)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"cat {i}")
    return tmp_path / "data"


def events_of(run_dir: Path) -> list[dict]:
    return Tail(run_dir / "events.jsonl").read_events()


def test_job_runs_to_done_and_is_tailed(small_dataset, studio_home):
    run_dir = start_job("scan", {"train_data_dir": [str(small_dataset)]}, name="my scan")
    assert run_dir.parent == studio_home / "runs" and run_dir.name.startswith("scan-my-scan-")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["job"] == "scan" and config["values"]["train_data_dir"] == [str(small_dataset)]
    wait_for(lambda: run_state(run_dir) == "done")
    log = Tail(run_dir / "log.txt")
    lines = log.read_lines()
    assert any("scan: started" in line for line in lines) and any("scan: done" in line for line in lines)
    assert log.read_lines() == []  # nothing new since the last read
    events = events_of(run_dir)
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
    assert events_of(run_dir)[-1]["event"] == "stopped"
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
    error = [e for e in events_of(run_dir) if e["event"] == "error"][-1]
    assert str(out) in error["message"]
    assert (out / "mine.txt").read_text() == "user data"


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


def test_kill_after_grace_and_dead_job_is_reported(small_dataset):
    run_dir = start_job("scan", {"train_data_dir": [str(small_dataset)]})
    proc = _running_process(run_dir)
    proc.suspend()  # a job that no longer answers to STOP
    request_stop(run_dir)
    assert runner.enforce_stop(run_dir, grace_s=60) is False
    assert runner.enforce_stop(run_dir, grace_s=0) is True
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    assert run_state(run_dir) == "killed"
