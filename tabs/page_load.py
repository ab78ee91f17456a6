"""What the page shows when it opens: the first page in one page-load event, every other tab when it is first
opened.

Each event costs the browser a pass over the page's components for every output it updates, and an output in a
tab that is not shown yet costs more (the browser looks for it in the whole page). With one load event per panel
(25 of them) that was most of the first page's render time; with one event for all (170 outputs, most of them in
tabs not shown) it still was (bench/bench_gui.py). So the parts of the page say here what they show when a page
opens (`on_load`), and `wire` sends the first page's (the workspace bar, the first tab, the side panel) in the
page-load event and each other tab's in that tab's first select of the page."""
from __future__ import annotations

import sys
import traceback
from typing import Callable

import gradio as gr

PARTS: list[tuple[Callable, list, list]] = []  # (fn, inputs, outputs) of the app being built (build_app clears it)


def on_load(fn: Callable, outputs: list, inputs: list | None = None) -> None:
    """Call `fn(*inputs)` when its part of the page is first shown; it returns a dict of updates, or values in
    `outputs` order."""
    PARTS.append((fn, list(inputs or []), list(outputs)))


def _unique(components: list) -> list:
    return list({c._id: c for c in components}.values())


def _updates(parts: list, inputs: list, values) -> dict:
    """Every part's updates together. A part that fails is reported on the console and the others still load."""
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
    return updates


def home_tab(block, tabs: gr.Tabs) -> gr.Tab | None:
    """The tab of `tabs` that `block` sits in (None: outside them)."""
    while block.parent is not None and block.parent is not tabs:
        block = block.parent
    return block if block.parent is tabs else None


def _load_once(parts: list, loaded: gr.State) -> tuple[Callable, list, list]:
    """The (fn, inputs, outputs) of an event that shows `parts` the first time it runs on a page."""
    inputs = _unique([c for _, ins, _ in parts for c in ins])
    outputs = _unique([c for _, _, outs in parts for c in outs])

    def load(done, *values) -> dict:
        if done:
            return {loaded: gr.skip()}
        return {**_updates(parts, inputs, values), loaded: True}

    return load, [loaded, *inputs], [loaded, *outputs]


def wire(blocks: gr.Blocks, tabs: gr.Tabs) -> None:
    """The page-load event of `blocks` (the parts outside `tabs` and in its first tab) and each other tab's
    first-select event (the parts all of whose outputs are in that tab)."""
    first = tabs.children[0] if tabs.children else None
    by_tab: dict[gr.Tab | None, list] = {}
    for part in PARTS:
        if not all(c._id in blocks.blocks for c in part[2]):
            continue
        homes = {home_tab(c, tabs) for c in part[2]}
        home = homes.pop() if len(homes) == 1 else None
        by_tab.setdefault(None if home is first else home, []).append(part)
    for home, parts in by_tab.items():
        fn, inputs, outputs = _load_once(parts, gr.State(False))
        (blocks.load if home is None else home.select)(fn, inputs=inputs, outputs=outputs, show_progress="hidden")
    PARTS.clear()
