"""The job protocol, inside the job process.

A job runs in its own run folder (core/jobs/run_folder.py names its files) and reports through it:
log lines, events, status, result; it honours a stop request with `ctx.check_stop()`.
Exit codes: 0 done or stopped, 1 failure, 2 invalid config.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

import psutil

from core.fsutil import atomic_write_json, runs_root
from core.jobs.locks import Target, TargetBusy, acquire, release
from core.jobs.run_folder import RunFolder

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


class JobStopped(Exception):
    """Raised by `ctx.check_stop()` so a job can unwind when the user asked it to stop."""


def new_run_dir(job: str, name: str = "", root: Path | None = None) -> Path:
    """A fresh folder `runs/<job>-<name>-<timestamp>` (suffixed if it exists already)."""
    root = Path(root) if root else runs_root()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in name.strip())[:40].strip("-")
    base = "-".join(p for p in (job, slug, stamp) if p)
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {root}")


def process_rank() -> int:
    """This process's rank under `accelerate launch` (0 when run alone)."""
    return int(os.environ.get("RANK") or 0)


class JobContext:
    """What a running job uses to talk to the world: log lines, events, stop requests.
    `with JobContext(run_dir) as ctx:` closes its files on exit.

    Under `accelerate launch` only rank 0 writes log.txt and events.jsonl; other ranks write
    log.rankN.txt and events.rankN.jsonl. `ctx.run` is the run folder."""

    def __init__(self, run_dir: str | os.PathLike, echo: bool = True, rank: int = 0):
        self.run = RunFolder(run_dir)
        self.run.path.mkdir(parents=True, exist_ok=True)
        self.echo, self.rank = echo, rank
        self._log = open(self.run.log_file(rank), "a", encoding="utf-8")
        self._events = open(self.run.events_file(rank), "a", encoding="utf-8")
        self._skipped: set[str] = set()

    def __enter__(self) -> JobContext:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._log.close()
        self._events.close()

    def log(self, message: str) -> None:
        line = f"{datetime.now().strftime('%H:%M:%S')} {message}"
        self._log.write(line + "\n")
        self._log.flush()
        if self.echo:
            print(line, flush=True)

    def event(self, kind: str, **fields) -> None:
        self._events.write(json.dumps({"event": kind, "time": time.time(), **fields},
                                      ensure_ascii=False, default=str) + "\n")
        self._events.flush()

    def progress(self, step: int, total: int, unit: str = "") -> None:
        """`unit`: what step and total count when not steps ("bytes": the GUI shows sizes and a byte rate)."""
        self.event("progress", step=step, total=total, **({"unit": unit} if unit else {}))

    def metric(self, name: str, step: int, value: float) -> None:
        self.event("metric", name=name, step=step, value=float(value))

    def image(self, path: str | os.PathLike) -> None:
        self.event("image", path=str(path))

    def warning(self, message: str, path: str | os.PathLike | None = None) -> None:
        self.log(f"WARNING: {message}" + (f" ({path})" if path else ""))
        self.event("warning", message=message, **({"path": str(path)} if path else {}))

    def skipped(self, path: str | os.PathLike, reason: str) -> None:
        """Report a file the run leaves out, once per run: training plans the dataset for its cache
        step and again for itself, and a file is not reported twice."""
        if str(path) not in self._skipped:
            self._skipped.add(str(path))
            self.warning(f"skipped: {reason}", path)

    def should_stop(self) -> bool:
        return self.run.stop_requested()

    def check_stop(self, message: str = "") -> None:
        """Raise JobStopped when a stop was asked (`message`, what the stop leaves behind, logged first)."""
        if self.should_stop():
            if message:
                self.log(message)
            raise JobStopped()


def execute(job: str, cfg, run_dir: Path, load, writes: list[Target] = ()) -> int:
    """Run the job (`load()` returns its `run(cfg, ctx)`) with the full protocol, holding the locks on the
    folders it `writes` (core/jobs/locks.py); returns the exit code."""
    rank = process_rank()
    with JobContext(run_dir, rank=rank) as ctx:
        return _execute(job, cfg, ctx, load, writes if rank == 0 else [])  # rank 0 holds the locks of the run


def _execute(job: str, cfg, ctx: JobContext, load, writes: list[Target]) -> int:
    run = ctx.run
    status = run.update_status if ctx.rank == 0 else (lambda **fields: None)  # rank 0 speaks for the run
    me = psutil.Process()
    status(job=job, pid=me.pid, pid_created=me.create_time(), state="running", started=time.time(), argv=sys.argv)
    ctx.log(f"{job}: started in {run.path}")
    try:
        locks = acquire(writes, job, run.path)
    except TargetBusy as busy:
        return _fail(ctx, status, f"refused: {busy}")
    try:
        return _run(job, cfg, ctx, load, status)
    finally:
        release(locks)


def failure_message(exc: BaseException) -> str:
    """The one line a failed job reports: never an empty reason (a MemoryError often has none)."""
    text = str(exc).strip()
    if not text:
        text = ("the computer ran out of memory: close other programs, or lower the batch size, the resolution or "
                "the loader workers" if isinstance(exc, MemoryError) else "no message (log.txt has the traceback)")
    return f"{type(exc).__name__}: {text}"


def _fail(ctx: JobContext, status, message: str, logged: str = "") -> int:
    """End the run as failed: `logged` (default: the message) to the log, the message to events."""
    ctx.log(logged or message)
    ctx.event("error", message=message)
    status(state="error", exit_code=EXIT_FAILURE, ended=time.time())
    return EXIT_FAILURE


def _run(job: str, cfg, ctx: JobContext, load, status) -> int:
    run = ctx.run
    try:
        result = load()(cfg, ctx)
    except JobStopped:
        result = None
        stopped = True
    except Exception as exc:  # the job failed: full traceback to the log, message to events
        return _fail(ctx, status, failure_message(exc), logged=traceback.format_exc().rstrip())
    else:
        stopped = ctx.should_stop()
    state = "stopped" if stopped else "done"
    if result is not None and ctx.rank == 0:
        atomic_write_json(run.result_file, result)
    ctx.event(state, **({"result": result} if result is not None else {}))
    ctx.log(f"{job}: {state}")
    status(state=state, exit_code=EXIT_OK, ended=time.time())
    return EXIT_OK
