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


def measured_memory(run_dir: str | os.PathLike) -> str:
    """The peak memory a training run measured, with the estimate made at its start and the error ("" when the
    run recorded none): "9.81 GiB GPU (est. 10.20, -4%)", or on a CPU the growth above the loaded model."""
    measured = (RunFolder(run_dir).read_result() or {}).get("measured")
    if not isinstance(measured, dict):
        return ""
    gpu = "peak_allocated" in measured
    peak = measured.get("peak_allocated" if gpu else "peak_rss_above_model")
    if not isinstance(peak, (int, float)):
        return ""
    text = f"{peak / 2**30:.2f} GiB {'GPU' if gpu else 'RAM above the model'}"
    if isinstance(measured.get("error_percent"), (int, float)) and measured.get("estimated"):
        text += f" (est. {measured['estimated'] / 2**30:.2f}, {measured['error_percent']:+.0f}%)"
    return text
