"""The queue's rules: what became of a running entry's run, and which entry may start now.

Order: waiting entries start in queue order; none overtakes the one before it. One GPU job at a time: an entry
whose job needs the GPU (JobSpec.needs_gpu) never starts while another GPU job runs (the queue's, or one started
outside it); a job that needs none may run beside it, one such job at a time, when the two touch no common folder
(dataset, model, output or locked target). Before an entry starts the per-target locks (core/jobs/locks.py) are
asked: a target another job writes makes it wait, never fail; a job refused at start by them waits again too.

Recovery (a runner or GUI killed mid-job, the job itself killed): an entry marked running is adopted while its job
runs, its outcome recorded once it ended; a job whose process died without a word is "interrupted". A training
that saved a state then waits to resume from the newest one; anything else runs again only when re-queued.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from core.fsutil import runs_root
from core.jobs.locks import busy_message, conflicts, folder_key
from core.jobs.registry import JOBS
from core.jobs.run_folder import RunFolder
from core.jobs.runner import ACTIVE_STATES, list_runs, run_state
from core.queue.entries import (
    FAILURES,
    UNSUCCESSFUL,
    Entry,
    QueueState,
    frozen_config,
    job_config,
    shared_folder,
    touched_folders,
)
from core.queue.store import skip_dependents
from core.train.checkpoints import saved_states

REFUSED = "refused: "  # how a job refused at start by a busy target words its error (core/jobs/protocol.py)


def run_name(entry: Entry) -> str:
    """The name in the entry's run folders (`runs/<job>-queue-<id>-<time>`): how a run is found again."""
    return f"queue-{entry.id}"


def finish(queue: QueueState, entry: Entry, status: str, reason: str = "") -> str:
    """Record how the entry ended; a failure skips the entries after it and, with on_failure "stop", pauses the
    queue. Returns a line for the runner's log."""
    entry.status, entry.reason, entry.ended = status, reason, time.time()
    if status in UNSUCCESSFUL:
        skip_dependents(queue, entry, status)
    if status in FAILURES and queue.on_failure == "stop" and not queue.paused:
        queue.paused = True
        queue.pause_reason = f"{entry.label()} {status}: the queue stops on a failure; resume it to go on"
    return f"{entry.label()}: {status}" + (f" ({reason})" if reason else "")


def settle(queue: QueueState) -> list[str]:
    """Look at each running entry's run and record what became of it; returns lines for the runner's log."""
    return [line for entry in queue.running() if (line := _settle(queue, entry))]


def _settle(queue: QueueState, entry: Entry) -> str | None:
    if not entry.run_dir:  # a runner was killed between marking it running and starting its job
        found = _started_run(entry)
        if found is None:
            entry.status, entry.started = "waiting", None
            return f"{entry.label()}: its start was cut short before the job began; it waits again"
        entry.run_dir = str(found)
    run = RunFolder(entry.run_dir)
    state = run_state(run.path)
    if state in ACTIVE_STATES:
        return None
    if state == "done":
        return finish(queue, entry, "done")
    if state == "stopped":
        return finish(queue, entry, "stopped", "stopped on request")
    if state == "killed" and run.stop_requested():
        return finish(queue, entry, "stopped", "stopped on request; its processes were ended after the grace period")
    message = _error_message(run)
    if state == "error" and message.startswith(REFUSED):
        entry.previous_runs.append(entry.run_dir)
        entry.status, entry.run_dir, entry.started = "waiting", None, None
        entry.reason = f"waits: {message.removeprefix(REFUSED)}"
        return f"{entry.label()}: refused at start, it waits ({entry.reason})"
    if state in ("error", "invalid") or message:
        return finish(queue, entry, "failed", message or f"the job ended with state {state!r} (see its log.txt)")
    return _interrupted(queue, entry)


def _interrupted(queue: QueueState, entry: Entry) -> str:
    """The job's process died without finishing (killed, machine restarted): resume a training from its newest saved
    state; anything else waits for the user to queue it again."""
    died = f"its process died before the job finished (run {entry.run_dir})"
    state = _saved_state(entry)
    if state is None:
        again = "no saved training state to resume from; " if entry.job == "train" else ""
        return finish(queue, entry, "interrupted", f"{died}; {again}it runs again only when you queue it again")
    entry.previous_runs.append(entry.run_dir)
    entry.status, entry.run_dir, entry.started, entry.resume_from = "waiting", None, None, str(state)
    entry.reason = f"interrupted: {died}; it resumes from the saved state {state}"
    return f"{entry.label()}: {entry.reason}"


def _saved_state(entry: Entry) -> Path | None:
    """A training's newest saved state written since the entry was queued (or the one it resumed from)."""
    if entry.job != "train":
        return None
    cfg = frozen_config(entry)
    for state in saved_states(cfg.output_dir, cfg.output_name):
        if str(state) == entry.resume_from or state.stat().st_mtime >= entry.added:
            return state
    return None


def _error_message(run: RunFolder) -> str:
    """Why the run failed: its last error event, else the last line of a traceback it printed before the job
    protocol began (an import error); "" when it said nothing (it was killed)."""
    errors = [event for event in run.last_events() if event.get("event") == "error"]
    if errors:
        return str(errors[-1].get("message", ""))
    console = run.text_tail(run.console_file, 20_000)
    if "Traceback (most recent call last)" in console:
        return console.strip().splitlines()[-1]
    return ""


def _started_run(entry: Entry) -> Path | None:
    """The run folder of the entry's start that was not recorded (the newest with its name, not an earlier try)."""
    earlier = set(entry.previous_runs)
    found = [path for path in runs_root().glob(f"{entry.job}-{run_name(entry)}-*") if str(path) not in earlier]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


@dataclass
class Busy:
    """A job that runs now (a queue entry's, or one started outside the queue): what `blocker` weighs."""
    label: str
    job: str
    folders: list[str]


def busy_jobs(queue: QueueState) -> list[Busy]:
    """The running entries' jobs, and the jobs started outside the queue (the GUI's Start buttons) that run."""
    busy = [Busy(entry.label(), entry.job, touched_folders(entry.job, frozen_config(entry)))
            for entry in queue.running()]
    ours = {folder_key(entry.run_dir) for entry in queue.entries if entry.run_dir}
    for run in list_runs():
        values = (RunFolder(run.run_dir).read_config() or {}).get("values")
        if run.state in ACTIVE_STATES and folder_key(run.run_dir) not in ours and run.job in JOBS \
                and isinstance(values, dict):
            busy.append(Busy(f"the {run.job} run in {run.run_dir}", run.job,
                             touched_folders(run.job, job_config(run.job, values))))
    return busy


def next_entry(queue: QueueState) -> Entry | None:
    """The entry to start now, or None; the first waiting entry that cannot start yet says why in its reason (an
    entry whose chain input failed or was removed is skipped on the way)."""
    if queue.paused:
        return None
    busy = None
    for entry in queue.entries:
        if entry.status != "waiting":
            continue
        before = queue.find(entry.after) if entry.after else None
        if entry.after and (before is None or before.status in UNSUCCESSFUL):
            what = "was removed from the queue" if before is None else before.status
            entry.status, entry.ended = "skipped", time.time()
            entry.reason = f"skipped: it depends on entry {entry.after}, which {what}"
            continue
        why = blocker(entry, before, busy_jobs(queue) if busy is None else busy)
        if why is None:
            return entry
        entry.reason = why
        return None
    return None


def blocker(entry: Entry, before: Entry | None, busy: list[Busy]) -> str | None:
    """Why `entry` cannot start beside the `busy` jobs now (None: it can)."""
    if before is not None and before.status != "done":
        return f"waits for {before.label()}, which it runs after"
    gpu = JOBS[entry.job].needs_gpu
    folders = touched_folders(entry.job, frozen_config(entry))
    for other in busy:
        if JOBS[other.job].needs_gpu == gpu:
            kind = "GPU job" if gpu else "job that needs no GPU"
            return f"waits for {other.label} to end: one {kind} runs at a time"
        shared = shared_folder(folders, other.folders)
        if shared:
            return f"waits for {other.label} to end: both use {shared}"
    busy_targets = conflicts(JOBS[entry.job].writes(frozen_config(entry)))
    if busy_targets:
        return "waits: " + "; ".join(busy_message(target, holder) for target, holder in busy_targets)
    return None
