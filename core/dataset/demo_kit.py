"""Where a demo kit is and what a newcomer's first run uses (light: the GUI imports it at start;
core/dataset/demo.py builds the kit)."""
from __future__ import annotations

import json
from pathlib import Path

DEMO_ENTRIES = ("model", "model.safetensors", "dataset")
MARKER = "demo.json"  # written last by the demo job: marks a complete kit made by it
TRY_IT_PRESET = "cpu-demo.json"  # the built-in training preset of the first run (presets/train/)


def kit_ready(out: str | Path, arch: str = "sd1") -> bool:
    """A complete demo kit of `arch` is in `out` (so it need not be built again)."""
    out = Path(out)
    try:
        summary = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return summary.get("arch") == arch and all((out / name).exists() for name in DEMO_ENTRIES)


def kit_workspace(out: str | Path) -> dict:
    """The workspace a kit in `out` gives: its dataset, its model (diffusers folder) and an output folder in it."""
    out = Path(out).resolve()
    return {"dataset": [str(out / "dataset")], "model": str(out / "model"), "output": str(out / "output")}
