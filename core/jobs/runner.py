"""The GUI side of the job protocol: start jobs as subprocesses, follow them, stop them.

Jobs run detached from the GUI (closing the browser or restarting the GUI does not stop
them); everything the GUI needs is in the run folder, so it can reattach at any time.

Stopping is one rule wherever it is asked (job panel, Runs tab, `python -m core stop`): create
STOP, give the job the grace period its JobSpec declares, then end its whole process tree.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from core.config import validate
from core.fsutil import REPO_ROOT, format_bytes, runs_root
from core.jobs.locks import live_process
from core.jobs.protocol import new_run_dir
from core.jobs.registry import JOBS, JobSpec
from core.jobs.run_folder import RunFolder

ACTIVE_STATES = ("starting", "running")
_children: dict[str, subprocess.Popen] = {}  # processes this GUI started, polled so none lingers


def job_command(job: str, run_dir: Path, cfg) -> list[str]:
    """The argv of a job run (for training with several processes: through `accelerate launch`)."""
    return [*JOBS[job].launcher_argv(cfg), "-m", "core", job, "--config", str(RunFolder(run_dir).config_file),
            "--run-dir", str(run_dir)]


def display_command(argv: list[str]) -> str:
    """The command as a user would type it in their shell (for copying)."""
    return subprocess.list2cmdline(argv) if os.name == "nt" else shlex.join(argv)


def start_detached(argv: list[str], output: Path) -> subprocess.Popen:
    """Start `argv` in the repo root as a process of its own (it outlives the GUI that started it), its
    output appended to `output`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    detach = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
              else {"start_new_session": True})
    with open(output, "ab") as out:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, **detach)


def start_job(job: str, values: dict, name: str = "", root: Path | None = None) -> Path:
    """Validate `values`, write a fresh run folder and start the job; raises ConfigError."""
    cfg = validate(JOBS[job].config, values, "form")
    run_dir = new_run_dir(job, name, root)
    run = RunFolder(run_dir)
    run.write_config(job, cfg)
    argv = job_command(job, run_dir, cfg)
    # status.json is created here and from then on written by the job alone; the launcher's
    # pid goes to its own file so the two processes never write the same file.
    run.update_status(job=job, state="starting", started=time.time(), command=display_command(argv))
    proc = start_detached(argv, run.console_file)
    _children[str(run_dir)] = proc
    run.launcher_pid_file.write_text(str(proc.pid))
    return run_dir


def _process(run_dir: Path, status: dict) -> psutil.Process | None:
    """The job's live process, or None (exited, or its pid was reused by another program)."""
    pid = status.get("pid") or RunFolder(run_dir).launcher_pid()
    if not pid:
        return None
    child = _children.get(str(run_dir))
    if child is not None and child.poll() is not None:
        return None
    return live_process(pid, status.get("pid_created"))


def run_state(run_dir: Path) -> str:
    """starting | running | done | stopped | error | invalid | killed (died without a word)."""
    status = RunFolder(run_dir).read_status()
    state = status.get("state", "unknown")
    just_launched = state == "starting" and time.time() - status.get("started", 0) < 10
    if state in ACTIVE_STATES and not just_launched and _process(run_dir, status) is None:
        status = RunFolder(run_dir).read_status()  # it may have finished between the two reads
        state = status.get("state", "unknown")
        if state in ACTIVE_STATES:
            return "killed"
    return state


def is_active(run_dir: Path) -> bool:
    return run_state(run_dir) in ACTIVE_STATES


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
        status = RunFolder(run_dir).read_status()
        if not status or (job and status.get("job") != job):
            continue
        runs.append(RunInfo(run_dir, status.get("job", "?"), run_state(run_dir),
                            status.get("started"), status.get("ended")))
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)


def request_stop(run_dir: Path) -> None:
    """Ask the job to stop at its next check (graceful)."""
    RunFolder(run_dir).request_stop()


def grace_period(run_dir: Path) -> float:
    """Seconds the run's job has to stop by itself once asked (its JobSpec says)."""
    spec = JOBS.get(RunFolder(run_dir).read_status().get("job"))
    return spec.stop_grace_s if spec else JobSpec.stop_grace_s


def kill_job(run_dir: Path) -> None:
    """End the job's whole process tree (after a graceful stop has had its chance)."""
    proc = _process(run_dir, RunFolder(run_dir).read_status())
    if proc is None:
        return
    procs = [proc, *proc.children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)
    RunFolder(run_dir).update_status(state="killed", ended=time.time())


def enforce_stop(run_dir: Path) -> bool:
    """Kill a job that was asked to stop more than its grace period ago and still runs (safe to call
    on every poll: it acts once the time is up)."""
    asked = RunFolder(run_dir).seconds_since_stop_request()
    if asked is not None and asked > grace_period(run_dir) and is_active(run_dir):
        kill_job(run_dir)
        return True
    return False


def stop_job(run_dir: Path, poll_s: float = 0.2) -> str:
    """Ask the job to stop, wait its grace period, end its process tree if it still runs; returns
    the state it ended in (stopped, killed, or done/error if it finished meanwhile)."""
    request_stop(run_dir)
    while is_active(run_dir) and not enforce_stop(run_dir):
        time.sleep(poll_s)
    return run_state(run_dir)


_stoppers: dict[str, threading.Thread] = {}  # run folder -> the thread stopping it (one per run)


def stop_in_background(run_dir: Path) -> None:
    """`stop_job` in a thread of this process, for a GUI that does not follow the run."""
    key = str(Path(run_dir).resolve())
    if key in _stoppers and _stoppers[key].is_alive():
        return
    request_stop(run_dir)  # asked before this returns, whatever the thread's timing
    _stoppers[key] = threading.Thread(target=stop_job, args=(Path(run_dir),), daemon=True, name=f"stop {key}")
    _stoppers[key].start()


def progress_rate(samples: list[tuple[float, int]], total: int) -> tuple[float | None, float | None]:
    """Steps per second and seconds left, from (time, step) samples of recent progress events."""
    if len(samples) < 2:
        return None, None
    (t0, s0), (t1, s1) = samples[0], samples[-1]
    if t1 <= t0 or s1 <= s0:
        return None, None
    rate = (s1 - s0) / (t1 - t0)
    return rate, max(total - s1, 0) / rate


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def progress_text(step: int, total: int, samples: list[tuple[float, int]], unit: str = "",
                  active: bool = True) -> str:
    """The line under a progress bar: done of total (percent), the rate, the time left while `active`.
    `unit` "bytes" (a download): sizes and a byte rate ("1.5 MiB / 4.0 MiB (38%) · 2.0 MiB/s · ETA 0:01"),
    else steps ("3/10 (30%) · 1.5 it/s")."""
    pct = 100.0 * step / total if total else 0.0
    rate, eta = progress_rate(samples, total)
    if unit == "bytes":
        parts = [f"{format_bytes(step)} / {format_bytes(total)} ({pct:.0f}%)"]
        if rate:
            parts.append(f"{format_bytes(rate)}/s")
    else:
        parts = [f"{step}/{total} ({pct:.0f}%)"]
        if rate:
            parts.append(f"{rate:.1f} it/s" if rate >= 1 else f"{1 / rate:.1f} s/it")
    if eta is not None and active:
        parts.append(f"ETA {format_duration(eta)}")
    return " · ".join(parts)
