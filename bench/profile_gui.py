"""Where the first page's render time goes: a CPU profile of the browser while it renders the studio.

Not a benchmark with a target (bench_gui.py has those): a tool for the person who wants the GUI to start faster.
It starts `gui.py` on a free port, opens a fresh headless chromium context at 1366x768, records the page's
JavaScript CPU profile (Chrome DevTools Protocol, 0.5 ms sampling) from navigation until the first page is
usable (bench_gui.READY), and prints the functions with the most time, self and inclusive, and the time per
script file. `--save FILE.cpuprofile` keeps the profile (chromium's DevTools opens it).

    python bench/profile_gui.py [--top 30] [--save page.cpuprofile]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gui import READY, VIEWPORT, Server, headless_chromium, studio_argv  # noqa: E402


def frame_name(node: dict) -> str:
    frame = node["callFrame"]
    return f'{frame["functionName"] or "(anonymous)"} {frame["url"].rsplit("/", 1)[-1]}:{frame["lineNumber"]}'


def times(profile: dict) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """Milliseconds per function (self and inclusive, a recursion counted once) and per script file."""
    nodes = {node["id"]: node for node in profile["nodes"]}
    parent = {child: node["id"] for node in profile["nodes"] for child in node.get("children", [])}
    per_node = collections.Counter()
    for node_id, delta in zip(profile["samples"], profile["timeDeltas"]):
        per_node[node_id] += delta / 1000
    own, inclusive, files = collections.Counter(), collections.Counter(), collections.Counter()
    for node_id, ms in per_node.items():
        own[frame_name(nodes[node_id])] += ms
        files[nodes[node_id]["callFrame"]["url"].rsplit("/", 1)[-1] or "(browser)"] += ms
        seen, current = set(), node_id
        while current is not None:
            name = frame_name(nodes[current])
            if name not in seen:
                inclusive[name] += ms
                seen.add(name)
            current = parent.get(current)
    return own, inclusive, files


def profile_page(browser, url: str) -> tuple[dict, float]:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        session = context.new_cdp_session(page)
        session.send("Profiler.enable")
        session.send("Profiler.setSamplingInterval", {"interval": 500})
        session.send("Profiler.start")
        started = time.perf_counter()
        page.goto(url, wait_until="commit")
        for selector in READY["studio"]:
            page.wait_for_selector(selector, state="visible", timeout=120_000)
        usable = time.perf_counter() - started
        return session.send("Profiler.stop")["profile"], usable
    finally:
        context.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=30, help="rows per table")
    parser.add_argument("--save", type=Path, help="write the profile here (.cpuprofile)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="profile-gui-") as tmp, headless_chromium() as browser:
        if browser is None:
            sys.exit("needs playwright and a chromium (./launch.sh bench installs them)")
        server = Server(studio_argv, Path(tmp), timeout=180)
        try:
            profile, usable = profile_page(browser, server.url)
        finally:
            server.close()
    if args.save:
        args.save.write_text(json.dumps(profile))
    own, inclusive, files = times(profile)
    print(f"GET / answered after {server.page_s:.2f} s; the page was usable {usable:.2f} s after navigation; "
          f"{sum(own.values()):.0f} ms of main-thread samples")
    for title, table in (("self time", own), ("inclusive time", inclusive), ("per script file", files)):
        print(f"\n{title} (ms)")
        for name, ms in table.most_common(args.top):
            print(f"{ms:9.1f}  {name}")


if __name__ == "__main__":
    main()
