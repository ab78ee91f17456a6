"""The queue runner: `python -m core queue run [--until-empty]`, a process of its own that runs the queue.

It holds the runner lock (`queue/runner.json`: its pid and start time; taken over when that process is gone, as the
job locks are), so two GUIs, or a GUI and the command line, never run the same entry twice. Each entry's job is
started with start_job, detached, so a runner that is killed leaves its job running: the next runner adopts it
(core/queue/schedule.py). The run folder is recorded in the entry before the runner waits for it; the runner then
polls the runs, records how they ended, and ends a stopped job's processes after its grace period.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import psutil

from core.config import ConfigError
from core.fsutil import atomic_write_json
from core.jobs.locks import live_process
from core.jobs.protocol import failure_message
from core.jobs.runner import enforce_stop, start_detached, start_job
from core.queue import store
from core.queue.entries import Entry
from core.queue.schedule import finish, next_entry, run_name, settle

POLL_S = 1.0  # how often the runner looks at the running jobs and the queue
_launched: list[subprocess.Popen] = []  # runners this process started (polled, so none lingers as a zombie)


def runner_file() -> Path:
    return store.queue_dir() / "runner.json"


def runner_log() -> Path:
    return store.queue_dir() / "runner.log"


def runner_holder() -> dict | None:
    """The live runner's {pid, pid_created, started}, or None when no runner runs."""
    try:
        holder = json.loads(runner_file().read_text(encoding="utf-8"))
        alive = live_process(holder["pid"], holder["pid_created"]) is not None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return holder if alive else None


def _claim(proc: psutil.Process) -> bool:
    """Take (or keep) the runner lock for `proc` (under the queue mutex): False when another live runner holds it."""
    holder = runner_holder()
    if holder is None:
        atomic_write_json(runner_file(), {"pid": proc.pid, "pid_created": proc.create_time(), "started": time.time()})
    return holder is None or holder["pid"] == proc.pid


def _release(proc: psutil.Process) -> None:
    """Give up the runner lock (under the queue mutex) if `proc` holds it."""
    holder = runner_holder()
    if holder and holder["pid"] == proc.pid:
        runner_file().unlink(missing_ok=True)


def run(until_empty: bool = False, poll_s: float = POLL_S, log: Callable[[str], None] | None = None) -> int:
    """Run the queue's entries until stopped (`until_empty`: until nothing is left to run: nothing running, and
    nothing waiting or the queue paused). A second runner ends at once. Returns the exit code."""
    log = log or _print
    me = psutil.Process()
    with store.mutex():
        claimed = _claim(me)
    if not claimed:
        holder = runner_holder() or {}
        log(f"another queue runner (pid {holder.get('pid', '?')}) runs this queue; this one ends")
        return 0
    log(f"queue runner (pid {me.pid}) runs {store.queue_file()}")
    notice = ""
    try:
        while True:
            with store.editing() as queue:
                if not _claim(me):  # its file was deleted and another runner took it: that one goes on
                    log("another queue runner took over; this one ends")
                    return 0
                if queue.notice and queue.notice != notice:
                    notice = queue.notice
                    log(notice)
                for line in settle(queue):
                    log(line)
                entry = next_entry(queue)
                if entry is not None:
                    entry.status, entry.started, entry.ended, entry.reason = "running", time.time(), None, ""
                runs = [Path(e.run_dir) for e in queue.running() if e.run_dir]
                idle = entry is None and not queue.running() and (queue.paused or not any(
                    e.status == "waiting" for e in queue.entries))
                if until_empty and idle:
                    _release(me)  # under the mutex: whoever adds an entry after this finds no runner
                    log("nothing left to run: the runner ends" + (" (the queue is paused)" if queue.paused else ""))
                    return 0
            # marked running (and written) before its job exists: a runner killed now leaves a trace to find it by
            if entry is not None:
                _start(entry, log)
            for run_dir in runs:
                enforce_stop(run_dir)  # a job asked to stop that outlives its grace period is ended
            if entry is None:
                time.sleep(poll_s)
    finally:
        with store.mutex():
            _release(me)


def _start(entry: Entry, log: Callable[[str], None]) -> None:
    """Start the entry's job and record its run folder (outside the mutex: validating may take a moment)."""
    try:
        run_dir = start_job(entry.job, entry.run_values(), name=run_name(entry))
    except Exception as exc:  # settings no longer valid, no room for the run folder, a launcher that refuses: the
        with store.editing() as queue:  # entry fails, the runner goes on
            if (current := queue.find(entry.id)) is not None:
                why = str(exc) if isinstance(exc, ConfigError) else failure_message(exc)
                log(finish(queue, current, "failed", f"not started: {why}"))
        return
    with store.editing() as queue:
        if (current := queue.find(entry.id)) is not None:
            current.run_dir = str(run_dir)
    log(f"{entry.label()}: started in {run_dir} ({entry.summary})")


def _print(line: str) -> None:
    print(f"{datetime.now().strftime('%H:%M:%S')} {line}", flush=True)


def ensure_runner() -> int | None:
    """Start a runner (detached; it ends when nothing is left to run) unless one is alive. Returns the new
    runner's pid, or None when one runs already. The GUI calls it after adding, resuming or re-queuing, and
    when it starts (a runner killed with the GUI is replaced and adopts the running job)."""
    for proc in list(_launched):
        if proc.poll() is not None:
            _launched.remove(proc)
    with store.mutex():
        if runner_holder():
            return None
        argv = [sys.executable, "-m", "core", "queue", "run", "--until-empty"]
        proc = start_detached(argv, runner_log())
        _launched.append(proc)
        try:  # the lock is the new runner's from now on: a second call does not start another
            _claim(psutil.Process(proc.pid))
        except psutil.Error:  # it ended already
            pass
        return proc.pid


def resume_queue() -> int | None:
    """When the GUI starts: a runner for a queue left with work (one killed with the GUI is replaced and adopts
    the running job); nothing is started for an idle or paused queue."""
    queue = store.read_queue()
    if queue.running() or (not queue.paused and any(e.status == "waiting" for e in queue.entries)):
        return ensure_runner()
    return None
