"""The estimate against the GPU: its free memory (asked of torch in a short child process, so the GUI's own
process never holds a CUDA context) or a chosen card size when there is none; a plain verdict; and the
report Check settings and `python -m core estimate` show."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from core.estimate.budget import MARGIN, Estimate, describe_arch
from core.estimate.savers import Saver

GPU_QUERY = ("import json, torch\n"
             "gpus = [dict(name=torch.cuda.get_device_name(i), free=torch.cuda.mem_get_info(i)[0],"
             " total=torch.cuda.mem_get_info(i)[1]) for i in range(torch.cuda.device_count())]"
             " if torch.cuda.is_available() else []\n"
             "print(json.dumps(gpus))")


@dataclass
class Gpu:
    name: str
    free: int
    total: int


def present_gpus(timeout: float = 60) -> list[Gpu]:
    """The CUDA GPUs with their free memory now (none on a machine without one, or when torch cannot say)."""
    try:
        out = subprocess.run([sys.executable, "-c", GPU_QUERY], capture_output=True, text=True, timeout=timeout,
                             check=True).stdout
        return [Gpu(**gpu) for gpu in json.loads(out.strip().splitlines()[-1])]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, TypeError):
        return []


def verdict(needed: int, available: int) -> str:
    """fits: room for the margin too; tight: within the margin; does not fit."""
    if needed * (1 + MARGIN) <= available:
        return "fits"
    return "tight" if needed <= available else "does not fit"


def gib(count: float) -> str:
    return f"{count / 2**30:.2f} GiB"


def report(found: Estimate, available: int, against: str, savers: list[Saver] | None = None,
           duration: str = "") -> str:
    """Markdown: the verdict, the breakdown, the savers (when it does not fit), the time."""
    said = verdict(found.needed, available)
    mark = {"fits": "fits", "tight": "tight", "does not fit": "does not fit"}[said]
    lines = [f"**Memory estimate: {gib(found.needed)} — {mark}** ({against}: {gib(available)}; "
             f"margin ±{MARGIN:.0%})",
             "",
             f"{describe_arch(found.arch)} from {found.source}. Peak in the {found.phase} phase: "
             f"{gib(found.peak)} allocated by torch + {gib(found.overhead)} CUDA context.",
             "", "| part | memory | |", "|---|---:|---|"]
    lines += [f"| {p.label} | {gib(p.bytes)} | {p.note} |" for p in found.weights]
    lines += [f"| {p.label} | {gib(p.bytes)} | {p.note} |" for p in found.training if p.bytes or p.note]
    lines += [f"- {note}" for note in found.notes]
    if savers and said != "fits":
        lines += ["", "**What would make it fit** (estimated saving each, on its own; click to apply):"]
        lines += [f"- {s.name}: −{gib(s.saving)} → {gib(s.peak + found.overhead)} "
                  f"({verdict(s.peak + found.overhead, available)})" for s in savers]
    if duration:
        lines += ["", duration]
    return "\n".join(lines)
