"""The GUI side of the job protocol: start jobs as subprocesses, follow them, stop them.

Jobs run detached from the GUI (closing the browser or restarting the GUI does not stop
them); everything the GUI needs is in the run folder, so it can reattach at any time.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from core.config import validate
from core.fsutil import REPO_ROOT, runs_root
from core.jobs.cli import write_run_config
from core.jobs.protocol import new_run_dir, write_status
from core.jobs.registry import JOBS

ACTIVE_STATES = ("starting", "running")
_children: dict[str, subprocess.Popen] = {}  # processes this GUI started, polled so none lingers


def job_command(job: str, run_dir: Path, cfg) -> list[str]:
    """The argv of a job run (for training with several processes: through `accelerate launch`)."""
    return [*JOBS[job].launcher_argv(cfg), "-m", "core", job, "--config", str(run_dir / "config.json"),
            "--run-dir", str(run_dir)]


def display_command(argv: list[str]) -> str:
    """The command as a user would type it in their shell (for copying)."""
    return subprocess.list2cmdline(argv) if os.name == "nt" else shlex.join(argv)


def start_job(job: str, values: dict, name: str = "", root: Path | None = None) -> Path:
    """Validate `values`, write a fresh run folder and start the job; raises ConfigError."""
    cfg = validate(JOBS[job].config, values, "form")
    run_dir = new_run_dir(job, name, root)
    write_run_config(run_dir, job, cfg)
    argv = job_command(job, run_dir, cfg)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    detach = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
              else {"start_new_session": True})
    # status.json is created here and from then on written by the job alone; the launcher's
    # pid goes to its own file so the two processes never write the same file.
    write_status(run_dir, job=job, state="starting", started=time.time(), command=display_command(argv))
    with open(run_dir / "console.txt", "wb") as console:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=console, stderr=subprocess.STDOUT, **detach)
    _children[str(run_dir)] = proc
    (run_dir / "launcher.pid").write_text(str(proc.pid))
    return run_dir


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _launcher_pid(run_dir: Path) -> int | None:
    try:
        return int((Path(run_dir) / "launcher.pid").read_text())
    except (OSError, ValueError):
        return None


def _process(run_dir: Path, status: dict) -> psutil.Process | None:
    """The job's live process, or None (exited, or its pid was reused by another program)."""
    pid = status.get("pid") or _launcher_pid(run_dir)
    if not pid:
        return None
    child = _children.get(str(run_dir))
    if child is not None and child.poll() is not None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        created = status.get("pid_created")
        if created is not None and abs(proc.create_time() - created) > 1.0:
            return None
        return proc
    except psutil.Error:
        return None


def run_state(run_dir: Path) -> str:
    """starting | running | done | stopped | error | invalid | killed (died without a word)."""
    status = read_status(run_dir)
    state = status.get("state", "unknown")
    just_launched = state == "starting" and time.time() - status.get("started", 0) < 10
    if state in ACTIVE_STATES and not just_launched and _process(run_dir, status) is None:
        status = read_status(run_dir)  # it may have finished between the two reads
        state = status.get("state", "unknown")
        if state in ACTIVE_STATES:
            return "killed"
    return state


def is_active(run_dir: Path) -> bool:
    return run_state(run_dir) in ACTIVE_STATES


def request_stop(run_dir: Path) -> None:
    """Ask the job to stop at its next check (graceful)."""
    (Path(run_dir) / "STOP").touch()


def kill_job(run_dir: Path) -> None:
    """Kill the job's whole process tree (after a graceful stop has had its chance)."""
    proc = _process(run_dir, read_status(run_dir))
    if proc is None:
        return
    procs = [proc, *proc.children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)
    write_status(Path(run_dir), state="killed", ended=time.time())


def enforce_stop(run_dir: Path, grace_s: float) -> bool:
    """Kill a job that was asked to stop more than `grace_s` ago and is still running."""
    stop = Path(run_dir) / "STOP"
    if stop.exists() and is_active(run_dir) and time.time() - stop.stat().st_mtime > grace_s:
        kill_job(run_dir)
        return True
    return False


@dataclass
class RunInfo:
    run_dir: Path
    job: str
    state: str
    started: float | None
    ended: float | None


def list_runs(job: str | None = None, root: Path | None = None) -> list[RunInfo]:
    """Every run folder (newest first), optionally of one job."""
    root = Path(root) if root else runs_root()
    runs = []
    for run_dir in root.iterdir() if root.is_dir() else []:
        status = read_status(run_dir)
        if not status or (job and status.get("job") != job):
            continue
        runs.append(RunInfo(run_dir, status.get("job", "?"), run_state(run_dir),
                            status.get("started"), status.get("ended")))
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)


class Tail:
    """Reads what was appended to a file since the last call, by byte offset, whole lines only."""

    def __init__(self, path: Path, offset: int = 0):
        self.path, self.offset = Path(path), offset

    def read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode("utf-8", errors="replace").splitlines()

    def read_events(self) -> list[dict]:
        events = []
        for line in self.read_lines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


def progress_rate(samples: list[tuple[float, int]], total: int) -> tuple[float | None, float | None]:
    """Steps per second and seconds left, from (time, step) samples of recent progress events."""
    if len(samples) < 2:
        return None, None
    (t0, s0), (t1, s1) = samples[0], samples[-1]
    if t1 <= t0 or s1 <= s0:
        return None, None
    rate = (s1 - s0) / (t1 - t0)
    return rate, max(total - s1, 0) / rate
