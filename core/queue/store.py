"""The queue file, `studio_home()/queue/queue.json`, and the operations on it.

Every change is a read-modify-write under a short file mutex (the FileMutex the job locks use), so the GUI, the
command line and the runner never lose each other's changes; the file is written atomically (a reader sees the old
queue or the new one). A file that is not a queue (edited by hand into nonsense) is never executed: it is moved aside
as `queue.json.bad-<time>`, a fresh empty queue takes its place, and the queue's `notice` names both files.
"""
from __future__ import annotations

import json
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import ValidationError

from core.config import format_validation_error, validate
from core.fsutil import atomic_write_json, studio_home
from core.jobs.locks import FileMutex
from core.jobs.registry import JOBS
from core.jobs.runner import request_stop
from core.queue.entries import ENDED, UNSUCCESSFUL, Entry, QueueState, describe


class QueueError(Exception):
    """An operation the queue refuses; the message says why."""


class _Unreadable(Exception):
    """The queue file is not a queue (the message says how)."""


def queue_dir() -> Path:
    return studio_home() / "queue"


def queue_file() -> Path:
    return queue_dir() / "queue.json"


def mutex() -> FileMutex:
    """Held while the queue file (or the runner lock) is read, changed and written back: milliseconds."""
    return FileMutex(queue_dir() / ".mutex")


def _parse(path: Path) -> QueueState:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return QueueState()
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unreadable(f"cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _Unreadable(f"is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    try:
        return QueueState.model_validate(data)
    except ValidationError as err:
        raise _Unreadable("is not a queue:\n" + format_validation_error(err, path.name)) from None


def _backup_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        backup = path.with_name(f"{path.name}.bad-{stamp}" + (f"-{i}" if i else ""))
        if not backup.exists():
            return backup
    raise QueueError(f"too many backups of {path} in {path.parent}")


def _load() -> QueueState:
    """The queue (under the mutex); a file that is not a queue is set aside and replaced by an empty queue."""
    path = queue_file()
    try:
        return _parse(path)
    except _Unreadable as bad:
        backup = _backup_name(path)
        path.rename(backup)
        queue = QueueState(notice=f"The queue file {path} {bad}\nNothing in it was run: it was kept as {backup} "
                                  "and a fresh empty queue was started.")
        write(queue)
        return queue


def read_queue() -> QueueState:
    """The queue as it is now (a file that is not a queue is set aside first; `notice` then says so)."""
    try:
        return _parse(queue_file())
    except _Unreadable:
        with mutex():
            return _load()


def write(queue: QueueState) -> None:
    atomic_write_json(queue_file(), queue.model_dump(mode="json"))


@contextmanager
def editing() -> Iterator[QueueState]:
    """The queue to change: written back when the block ends (if it changed), one process at a time."""
    with mutex():
        queue = _load()
        before = queue.model_dump(mode="json")
        yield queue
        if queue.model_dump(mode="json") != before:
            write(queue)


def _get(queue: QueueState, entry_id: str) -> Entry:
    entry = queue.find(entry_id)
    if entry is None:
        raise QueueError(f"no entry {entry_id!r} in the queue")
    return entry


def make_entry(job: str, values: dict, source: str = "") -> Entry:
    """A new entry (no id yet) with `values` validated by the job's schema and frozen; raises ConfigError."""
    if job not in JOBS:
        raise QueueError(f"unknown job {job!r} (jobs: {', '.join(JOBS)})")
    cfg = validate(JOBS[job].config, values, source or f"{job} settings")
    return Entry(id="new", job=job, values=cfg.model_dump(mode="json"), summary=describe(job, cfg), added=time.time())


def append(queue: QueueState, entry: Entry, after: str | None = None) -> Entry:
    """Put `entry` last in the queue with an id of its own, optionally after an entry that has not failed."""
    if after is not None:
        before = _get(queue, after)
        if before.status in UNSUCCESSFUL:
            raise QueueError(f"{before.label()} ended {before.status}: re-queue it first, or queue this one on "
                             "its own")
    entry.after = after
    entry.id = next(i for i in iter(lambda: secrets.token_hex(3), None) if queue.find(i) is None)
    queue.entries.append(entry)
    return entry


def add(job: str, values: dict, after: str | None = None) -> Entry:
    """Queue a job with its settings frozen now (raises ConfigError when they are invalid, QueueError)."""
    entry = make_entry(job, values)
    with editing() as queue:
        return append(queue, entry, after)


def edit(entry_id: str, values: dict) -> Entry:
    """Replace a waiting entry's settings (validated and frozen again, as when added); it keeps its place and its
    chain. Raises ConfigError, QueueError."""
    edited = make_entry(_get(read_queue(), entry_id).job, values)  # validated before the mutex is taken
    with editing() as queue:
        entry = _get(queue, entry_id)
        if entry.status != "waiting":
            raise QueueError(f"{entry.label()} is {entry.status}: only a waiting entry can be edited")
        entry.values, entry.summary = edited.values, edited.summary
        return entry


def skip_dependents(queue: QueueState, entry: Entry, what_happened: str) -> list[Entry]:
    """Mark every waiting entry that runs after `entry` (directly or through others) skipped, saying why."""
    skipped = [dep for dep in queue.dependents(entry.id) if dep.status == "waiting"]
    for dep in skipped:
        dep.status, dep.ended = "skipped", time.time()
        dep.reason = f"skipped: it depends on {entry.label()}, which {what_happened}"
    return skipped


def remove(entry_id: str) -> Entry:
    """Take an entry out of the queue (not the running one). The entries that run after it go on when it was done,
    else they are skipped."""
    with editing() as queue:
        entry = _get(queue, entry_id)
        if entry.status == "running":
            raise QueueError(f"{entry.label()} is running: stop it first")
        queue.entries.remove(entry)
        if entry.status == "done":
            for dep in queue.entries:
                if dep.after == entry.id:
                    dep.after = None
        else:
            skip_dependents(queue, entry, "was removed from the queue")
        return entry


def move(entry_id: str, direction: str) -> None:
    """Move an entry one place "up" (earlier) or "down"; never above the entry it runs after."""
    if direction not in ("up", "down"):
        raise QueueError(f"move: direction must be up or down, not {direction!r}")
    with editing() as queue:
        entry = _get(queue, entry_id)
        i = queue.entries.index(entry)
        j = i - 1 if direction == "up" else i + 1
        if not 0 <= j < len(queue.entries):
            raise QueueError(f"{entry.label()} is already {'first' if direction == 'up' else 'last'}")
        upper, lower = (queue.entries[j], entry) if direction == "up" else (entry, queue.entries[j])
        if lower.after == upper.id:
            raise QueueError(f"{lower.label()} runs after {upper.label()}: it cannot move above it")
        queue.entries[i], queue.entries[j] = queue.entries[j], queue.entries[i]


def pause(reason: str = "paused by the user") -> None:
    """The running job goes on; nothing new starts until `resume`."""
    with editing() as queue:
        queue.paused, queue.pause_reason = True, reason


def resume() -> None:
    with editing() as queue:
        queue.paused, queue.pause_reason = False, ""


def set_on_failure(mode: str) -> None:
    """What a failed entry does to the queue: "skip" (go on with the next) or "stop" (pause the queue)."""
    if mode not in ("skip", "stop"):
        raise QueueError(f"on failure: skip or stop, not {mode!r}")
    with editing() as queue:
        queue.on_failure = mode


def _requeue(entry: Entry) -> None:
    if entry.run_dir:
        entry.previous_runs.append(entry.run_dir)
    entry.status, entry.run_dir, entry.reason, entry.resume_from = "waiting", None, "", ""
    entry.started = entry.ended = None


def retry(entry_id: str) -> list[Entry]:
    """Queue a finished entry again where it stands (its settings unchanged), with the entries that were skipped
    because of it; returns them."""
    with editing() as queue:
        entry = _get(queue, entry_id)
        if entry.status not in ENDED:
            raise QueueError(f"{entry.label()} is {entry.status}: only a finished entry can be queued again")
        before = queue.find(entry.after) if entry.after else None
        if entry.after and before is None:
            entry.after = None  # what it ran after was removed: it runs on its own
        elif before is not None and before.status in UNSUCCESSFUL:
            raise QueueError(f"{entry.label()} runs after {before.label()}, which {before.status}: queue that one "
                             "again (the entries after it follow)")
        again = [entry, *(dep for dep in queue.dependents(entry.id) if dep.status == "skipped")]
        for item in again:
            _requeue(item)
        return again


def stop_running(entry_id: str | None = None, pause_queue: bool = False) -> list[Entry]:
    """Ask the running entry (or the one named) to stop, as the job panel's Stop does: its run folder gets STOP,
    and the runner ends its processes once the job's grace period is over. `pause_queue`: start nothing after it."""
    with editing() as queue:
        running = [_get(queue, entry_id)] if entry_id else queue.running()
        if entry_id and running[0].status != "running":
            raise QueueError(f"{running[0].label()} is not running ({running[0].status})")
        if pause_queue:
            queue.paused, queue.pause_reason = True, "paused when the running job was stopped"
    for entry in running:
        if entry.run_dir:
            request_stop(Path(entry.run_dir))
    return running


def dismiss_notice() -> None:
    with editing() as queue:
        queue.notice = ""
