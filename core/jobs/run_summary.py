"""What a finished (or running) run produced, read from its folder: last metrics, output files.

Cheap enough to call for every row of the runs table: metrics come from the end of
events.jsonl only, however long the file has grown.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.jobs.run_folder import RunFolder


def last_metric(run_dir: str | os.PathLike, name: str) -> float | None:
    """The latest value of metric `name` (looked for near the end of the events only)."""
    for event in reversed(RunFolder(run_dir).last_events()):
        if event.get("event") == "metric" and event.get("name") == name:
            try:
                return float(event["value"])
            except (KeyError, TypeError, ValueError):
                return None
    return None


def output_files(run_dir: str | os.PathLike) -> list[tuple[Path, bool]]:
    """Models and states the run saved (checkpoints in order, then the final model and the
    resumable state), each with whether it still exists (old checkpoints get pruned)."""
    run = RunFolder(run_dir)
    result = run.read_result() or {}
    checkpoints = [str(event["path"]) for event in run.read_events("checkpoint") if event.get("path")]
    paths = checkpoints + [str(result[key]) for key in ("model", "state") if result.get(key)]
    unique = list(dict.fromkeys(paths))
    return [(Path(path), Path(path).exists()) for path in unique]
