"""What a finished (or running) run produced, read from its folder: last metrics, output files.

Cheap enough to call for every row of the runs table: metrics come from the end of
events.jsonl only, however long the file has grown.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

TAIL_BYTES = 64 * 1024


def _parse(line: bytes) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:  # a partial line (the job is writing it) or a damaged one
        return None
    return event if isinstance(event, dict) else None


def last_events(run_dir: str | os.PathLike, max_bytes: int = TAIL_BYTES) -> list[dict]:
    """The events in the last `max_bytes` of events.jsonl, oldest first (whole lines only)."""
    try:
        with open(Path(run_dir) / "events.jsonl", "rb") as f:
            start = max(f.seek(0, os.SEEK_END) - max_bytes, 0)
            f.seek(start)
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # begins mid-line
    return [event for event in map(_parse, lines) if event is not None]


def last_metric(run_dir: str | os.PathLike, name: str) -> float | None:
    """The latest value of metric `name` (looked for near the end of the events only)."""
    for event in reversed(last_events(run_dir)):
        if event.get("event") == "metric" and event.get("name") == name:
            try:
                return float(event["value"])
            except (KeyError, TypeError, ValueError):
                return None
    return None


def _checkpoint_paths(run_dir: Path) -> list[str]:
    """Paths of every checkpoint event (the whole file, but only those lines are parsed)."""
    paths = []
    try:
        with open(run_dir / "events.jsonl", "rb") as f:
            for line in f:
                if b'"checkpoint"' not in line:
                    continue
                event = _parse(line)
                if event and event.get("event") == "checkpoint" and event.get("path"):
                    paths.append(str(event["path"]))
    except OSError:
        pass
    return paths


def _result(run_dir: Path) -> dict:
    try:
        result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return result if isinstance(result, dict) else {}


def output_files(run_dir: str | os.PathLike) -> list[tuple[Path, bool]]:
    """Models and states the run saved (checkpoints in order, then the final model and the
    resumable state), each with whether it still exists (old checkpoints get pruned)."""
    run_dir = Path(run_dir)
    result = _result(run_dir)
    paths = _checkpoint_paths(run_dir) + [str(result[key]) for key in ("model", "state") if result.get(key)]
    unique = list(dict.fromkeys(paths))
    return [(Path(path), Path(path).exists()) for path in unique]
