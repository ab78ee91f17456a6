"""The launch.bat scenarios under wine (run_scenarios.py), run in the background of the test suite.

tests/conftest.py calls: `last(items)` (the test that reads the results is run last), `start(session)`
once collection is done (only when that test was collected), `stop()` at the end of the session
(the runner and every wine process of its prefix are ended: nothing is left running).
test_launch_wine.py calls `results()`, which starts the run itself when no hook did.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEST_FILE = "test_launch_wine.py"
WAIT_S = 900  # setup (once, 1-2 minutes) + about 3 minutes of scenarios, on a busy machine

_run = {}


def last(items) -> None:
    items.sort(key=lambda item: item.path.name == TEST_FILE)


def start(session=None) -> None:
    if _run or not sys.platform.startswith("linux"):
        return
    if session is not None and not any(item.path.name == TEST_FILE for item in session.items):
        return
    work = Path(tempfile.mkdtemp(prefix="sd-studio-launch-bat-"))
    log = open(work / "runner.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    _run.update(work=work, results=work / "results.json", log=log, started=time.monotonic())
    _run["process"] = subprocess.Popen(
        [sys.executable, str(HERE / "run_scenarios.py"), str(work / "results.json"), str(work / "run")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def results() -> dict:
    """The runner's results ({"skipped": why} or {"scenarios": [...]}), waiting for it to end."""
    start()
    process = _run["process"]
    try:
        process.wait(timeout=max(1.0, WAIT_S - (time.monotonic() - _run["started"])))
    except subprocess.TimeoutExpired:
        stop()
        return {"error": f"the launch.bat scenarios did not end within {WAIT_S} s", "log": runner_log()}
    if not _run["results"].exists():
        return {"error": f"the runner ended with exit code {process.returncode}", "log": runner_log()}
    return json.loads(_run["results"].read_text(encoding="utf-8"))


def runner_log() -> str:
    try:
        return (_run["work"] / "runner.log").read_text(encoding="utf-8", errors="replace")[-5000:]
    except OSError:
        return ""


def stop() -> None:
    """End the runner (if still running) and every wine process of its prefix; remove its files."""
    if not _run:
        return
    process = _run["process"]
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        sys.path.insert(0, str(HERE))
        from run_scenarios import stop_wineserver, wine_home

        stop_wineserver(wine_home())  # the wine processes of the scenarios run in sessions of their own
    _run["log"].close()
    shutil.rmtree(_run["work"], ignore_errors=True)
    _run.clear()
