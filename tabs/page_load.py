"""One page-load event for the whole app.

Each event costs the browser a pass over the page's components for every output it updates: with one load
event per panel (25 of them) that was most of the first page's render time (bench/bench_gui.py). So the
parts of the page say here what they show when a page opens (`on_load`), and tabs/app.py sends it all in
one event (`wire`)."""
from __future__ import annotations

import sys
import traceback
from typing import Callable

import gradio as gr

PARTS: list[tuple[Callable, list, list]] = []  # (fn, inputs, outputs) of the app being built (build_app clears it)


def on_load(fn: Callable, outputs: list, inputs: list | None = None) -> None:
    """Call `fn(*inputs)` when a page opens; it returns a dict of updates, or values in `outputs` order."""
    PARTS.append((fn, list(inputs or []), list(outputs)))


def _unique(components: list) -> list:
    return list({c._id: c for c in components}.values())


def wire(blocks: gr.Blocks) -> None:
    """The one load event of `blocks`: every part's updates together. A part that fails is reported on the
    console and the others still load."""
    parts = [part for part in PARTS if all(c._id in blocks.blocks for c in part[2])]
    inputs = _unique([c for _, ins, _ in parts for c in ins])
    outputs = _unique([c for _, _, outs in parts for c in outs])

    def load(*values) -> dict:
        given = {c._id: v for c, v in zip(inputs, values)}
        updates = {}
        for fn, ins, outs in parts:
            try:
                result = fn(*[given[c._id] for c in ins])
            except Exception:  # noqa: BLE001  (one broken part must not leave the whole page empty)
                print(f"page load: {getattr(fn, '__qualname__', fn)} failed:\n{traceback.format_exc()}",
                      file=sys.stderr, flush=True)
                continue
            if not isinstance(result, dict):
                result = dict(zip(outs, [result] if len(outs) == 1 else result))
            updates.update(result)
        return updates or {outputs[0]: gr.skip()}

    if outputs:
        blocks.load(load, inputs=inputs, outputs=outputs, show_progress="hidden")
    PARTS.clear()
