"""A run folder: the one place that names the files a job run leaves and reads them back.

  config.json              the validated arguments (plus job name and schema version)
  log.txt, log.rankN.txt   human lines (rank N > 0 of a multi-process run writes its own)
  events.jsonl, events.rankN.jsonl
                           one JSON object a line: progress, metric, image, warning, checkpoint, done,
                           stopped, error
  status.json              pid, state (starting/running/done/stopped/error/invalid/killed), exit code, times
  result.json              what the job returned
  STOP                     created by whoever wants the job to stop
  console.txt, launcher.pid  the started process's own output and pid (runs started by the GUI)
  report.json, buckets.json  the scan's report, the bucket plan
  samples/, tensorboard/, tensorboard.log  a training run's sample images and TensorBoard logs
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from core.config import SCHEMA_VERSION
from core.fsutil import atomic_write_json

EVENTS_TAIL_BYTES = 64 * 1024  # how far from the end `last_events` looks


def _rank_suffix(rank: int) -> str:
    return f".rank{rank}" if rank else ""


def parse_event(line: str | bytes) -> dict | None:
    """One events.jsonl line as a dict; None for a partial line (the job is writing it) or a damaged one."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class Tail:
    """Reads what was appended to a file since the last call, by byte offset, whole lines only."""

    def __init__(self, path: str | os.PathLike, offset: int = 0):
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

    def read_events(self, kind: str | None = None) -> list[dict]:
        """The events among the new lines (only those of `kind` when given)."""
        return events_in(self.read_lines(), kind)


def events_in(lines: list[str], kind: str | None = None) -> list[dict]:
    """The events of events.jsonl lines; with `kind`, only lines that spell it are parsed."""
    if kind is not None:
        lines = [line for line in lines if f'"{kind}"' in line]
    events = [event for event in map(parse_event, lines) if event is not None]
    return events if kind is None else [event for event in events if event.get("event") == kind]


class RunFolder:
    """The files of one run folder, by name, and their readers."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    def log_file(self, rank: int = 0) -> Path:
        return self.path / f"log{_rank_suffix(rank)}.txt"

    def events_file(self, rank: int = 0) -> Path:
        return self.path / f"events{_rank_suffix(rank)}.jsonl"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def result_file(self) -> Path:
        return self.path / "result.json"

    @property
    def stop_file(self) -> Path:
        return self.path / "STOP"

    @property
    def console_file(self) -> Path:
        return self.path / "console.txt"

    @property
    def launcher_pid_file(self) -> Path:
        return self.path / "launcher.pid"

    @property
    def scan_report_file(self) -> Path:
        return self.path / "report.json"

    @property
    def bucket_plan_file(self) -> Path:
        return self.path / "buckets.json"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def tensorboard_log(self) -> Path:
        return self.path / "tensorboard.log"

    def read_status(self) -> dict:
        """status.json ({} while it does not exist or cannot be read)."""
        status = _read_json(self.status_file)
        return status if isinstance(status, dict) else {}

    def update_status(self, **fields) -> None:
        atomic_write_json(self.status_file, {**self.read_status(), **fields})

    def write_config(self, job: str, cfg) -> None:
        """config.json: the validated arguments (a JobConfig) with the job's name and the schema version."""
        atomic_write_json(self.config_file, {"schema_version": SCHEMA_VERSION, "job": job,
                                             "values": cfg.model_dump(mode="json")})

    def read_config(self) -> dict | None:
        return _read_json(self.config_file)

    def read_result(self) -> dict | None:
        """result.json; None when the run has not finished, failed, or returned nothing."""
        result = _read_json(self.result_file)
        return result if isinstance(result, dict) else None

    def read_scan_report(self) -> dict | None:
        return _read_json(self.scan_report_file)

    def read_bucket_plan(self) -> dict | None:
        return _read_json(self.bucket_plan_file)

    def launcher_pid(self) -> int | None:
        try:
            return int(self.launcher_pid_file.read_text())
        except (OSError, ValueError):
            return None

    def request_stop(self) -> None:
        """Create STOP (once: the grace period counts from the first request)."""
        if not self.stop_file.exists():
            self.stop_file.touch()

    def stop_requested(self) -> bool:
        return self.stop_file.exists()

    def seconds_since_stop_request(self) -> float | None:
        try:
            return max(0.0, time.time() - self.stop_file.stat().st_mtime)
        except OSError:
            return None

    def log_tail(self, offset: int = 0) -> Tail:
        return Tail(self.log_file(), offset)

    def events_tail(self, offset: int = 0) -> Tail:
        return Tail(self.events_file(), offset)

    def read_events(self, kind: str | None = None) -> list[dict]:
        """Every event of the run (of `kind` when given), oldest first."""
        return self.events_tail().read_events(kind)

    def last_events(self, max_bytes: int = EVENTS_TAIL_BYTES) -> list[dict]:
        """The events in the last `max_bytes` of events.jsonl, oldest first: cheap however long it grew."""
        try:
            start = max(self.events_file().stat().st_size - max_bytes, 0)
        except OSError:
            return []
        lines = self.events_tail(start).read_lines()
        return events_in(lines[1:] if start > 0 else lines)  # the first line began before `start`

    def text_tail(self, path: Path, max_bytes: int = 200_000) -> str:
        """The end of one of the run's text files ("" when it does not exist)."""
        try:
            with open(path, "rb") as f:
                f.seek(max(f.seek(0, os.SEEK_END) - max_bytes, 0))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
