"""One writer per target: a job that writes into a model output folder, a dataset's captions, a latent cache
or a class-image folder holds a lock on it while it runs, and a second job on the same target (or a folder
inside it, or around it) is refused at start, with the name and run folder of the job that holds it.

A lock is a small JSON file in `studio_home()/locks/` (the user's folders get no lock files): the job, its
pid and the pid's start time, its run folder, the kind and the target folder. It is removed when the job
ends; one whose process is gone (killed, crashed, machine restarted) is stale and taken over, on Windows
too (the pid's start time tells a reused pid apart). Locks are taken all at once, under a short mutex (FileMutex).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import psutil

from core.fsutil import atomic_write_json, studio_home

MUTEX_STALE_S = 30.0  # a mutex file older than this was left by a killed process


def folder_key(path: str | os.PathLike) -> str:
    """A path as locks compare it: absolute, in the case the file system compares (Windows: any case)."""
    return os.path.normcase(os.path.abspath(path))


def overlap(a: str, b: str) -> bool:
    """Whether folder `a` is folder `b`, or one holds the other (both as `folder_key` gives them)."""
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Target:
    kind: str    # what is written: "model output", "captions", "latent cache", "class images", "demo kit"
    folder: str  # the folder written into (its subfolders are covered too)
    field: str   # the setting that names the folder

    def key(self) -> str:
        return folder_key(self.folder)


@dataclass(frozen=True)
class Holder:
    job: str
    pid: int
    pid_created: float
    run_dir: str
    kind: str
    folder: str


class TargetBusy(RuntimeError):
    """Another running job writes into the same target."""


def locks_root() -> Path:
    return studio_home() / "locks"


def live_process(pid: int | None, created: float | None) -> psutil.Process | None:
    """The running process `pid` if it is the one that started at `created` (None: any), else None
    (exited, a zombie, or the pid reused by another program)."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if created is not None and abs(proc.create_time() - created) > 1.0:
            return None
        return proc
    except psutil.Error:
        return None


def busy_message(target: Target, holder: Holder) -> str:
    """The one text for a target held by another job (start refusal and Check settings alike)."""
    where = "" if holder.folder == target.folder else f" (it writes {holder.folder})"
    return (f"{target.folder}: the {holder.job} job in {holder.run_dir} (pid {holder.pid}) is writing its "
            f"{holder.kind}{where}; wait for it to end, or stop it, then start again")


def conflicts(targets: Iterable[Target], run_dir: str | os.PathLike | None = None) -> list[tuple[Target, Holder]]:
    """(target, holder) for each target that a live job other than the run in `run_dir` writes, in the order of
    `targets`."""
    mine = folder_key(run_dir) if run_dir else None
    others = [holder for holder, _ in _live_holders() if not (mine and folder_key(holder.run_dir) == mine)]
    return [(target, holder) for target in targets for holder in others
            if target.kind == holder.kind and overlap(target.key(), os.path.normcase(holder.folder))]


def acquire(targets: Iterable[Target], job: str, run_dir: str | os.PathLike) -> list[Path]:
    """Lock every target for the job running in `run_dir` (this process); raises TargetBusy naming each
    target another live job holds. Returns the lock files, for `release`."""
    targets = list(dict.fromkeys(targets))
    if not targets:
        return []
    me = psutil.Process()
    with FileMutex(locks_root() / ".mutex"):
        busy = conflicts(targets, run_dir)
        if busy:
            raise TargetBusy("\n".join(busy_message(t, h) for t, h in busy))
        files = []
        for target in targets:
            holder = Holder(job, me.pid, me.create_time(), str(os.path.abspath(run_dir)), target.kind,
                            str(os.path.abspath(target.folder)))
            name = hashlib.sha1(f"{target.kind}\n{target.key()}\n{holder.run_dir}".encode()).hexdigest()[:20]
            path = locks_root() / f"{name}.json"
            atomic_write_json(path, asdict(holder))
            files.append(path)
        return files


def release(files: Iterable[Path]) -> None:
    for path in files:
        Path(path).unlink(missing_ok=True)


def _live_holders() -> list[tuple[Holder, Path]]:
    """The locks of live jobs; stale lock files (their process is gone, or unreadable) are removed."""
    root = locks_root()
    found = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            holder = Holder(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            holder = None
        if holder is None or live_process(holder.pid, holder.pid_created) is None:
            path.unlink(missing_ok=True)
            continue
        found.append((holder, path))
    return found


class FileMutex:
    """Only one process at a time inside (held for milliseconds): an exclusively created file at `path` that
    names its holder (pid and start time), taken over at once when that process is gone (killed), or after
    MUTEX_STALE_S when it names none. Used for the job locks and the queue file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + 2 * MUTEX_STALE_S
        me = psutil.Process()
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._left_behind():
                    self.path.unlink(missing_ok=True)
                    continue
                if time.monotonic() > deadline:
                    raise TargetBusy(f"{self.path} stays locked: delete it if no studio program is using it")
                time.sleep(0.02)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{me.pid} {me.create_time()}")
            return self

    def _left_behind(self) -> bool:
        """Whether the mutex file was left by a process that is gone (or is older than MUTEX_STALE_S)."""
        try:
            text, age = self.path.read_text(), time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False  # released meanwhile: try again
        try:
            pid, created = text.split()
            return live_process(int(pid), float(created)) is None
        except ValueError:  # being written, or written by an older version
            return age > MUTEX_STALE_S

    def __exit__(self, *exc_info):
        self.path.unlink(missing_ok=True)
