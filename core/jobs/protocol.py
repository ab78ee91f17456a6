"""The job protocol, inside the job process.

A job runs in its own run folder and reports through it:
  config.json   the validated arguments (plus job name and schema version)
  log.txt       human lines (also echoed to stdout)
  events.jsonl  one JSON object a line: progress, metric, image, warning, done, stopped, error
  status.json   pid, state (running/done/stopped/error/invalid), exit code, times
  STOP          created by whoever wants the job to stop; jobs poll `ctx.should_stop()`
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

from core.fsutil import atomic_write_json, runs_root

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

    Under `accelerate launch` only rank 0 writes log.txt and events.jsonl; other ranks write
    log.rankN.txt and events.rankN.jsonl."""

    def __init__(self, run_dir: str | os.PathLike, echo: bool = True, rank: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.echo, self.rank = echo, rank
        suffix = f".rank{rank}" if rank else ""
        self._log = open(self.run_dir / f"log{suffix}.txt", "a", encoding="utf-8")
        self._events = open(self.run_dir / f"events{suffix}.jsonl", "a", encoding="utf-8")
        self._skipped: set[str] = set()

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

    def progress(self, step: int, total: int) -> None:
        self.event("progress", step=step, total=total)

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
        return (self.run_dir / "STOP").exists()

    def check_stop(self) -> None:
        if self.should_stop():
            raise JobStopped()


def write_status(run_dir: Path, **fields) -> None:
    path = run_dir / "status.json"
    status = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    status.update(fields)
    atomic_write_json(path, status)


def execute(job: str, cfg, run_dir: Path, load) -> int:
    """Run the job (`load()` returns its `run(cfg, ctx)`) with the full protocol; returns the exit code."""
    import psutil

    rank = process_rank()
    ctx = JobContext(run_dir, rank=rank)
    status = write_status if rank == 0 else (lambda *args, **kwargs: None)  # rank 0 speaks for the run
    me = psutil.Process()
    status(run_dir, job=job, pid=me.pid, pid_created=me.create_time(), state="running",
           started=time.time(), argv=sys.argv)
    ctx.log(f"{job}: started in {run_dir}")
    try:
        result = load()(cfg, ctx)
    except JobStopped:
        result = None
        stopped = True
    except Exception as exc:  # the job failed: full traceback to the log, message to events
        ctx.log(traceback.format_exc().rstrip())
        ctx.event("error", message=f"{type(exc).__name__}: {exc}")
        status(run_dir, state="error", exit_code=EXIT_FAILURE, ended=time.time())
        ctx.close()
        return EXIT_FAILURE
    else:
        stopped = ctx.should_stop()
    state = "stopped" if stopped else "done"
    if result is not None and rank == 0:
        atomic_write_json(run_dir / "result.json", result)
    ctx.event(state, **({"result": result} if result is not None else {}))
    ctx.log(f"{job}: {state}")
    status(run_dir, state=state, exit_code=EXIT_OK, ended=time.time())
    ctx.close()
    return EXIT_OK
