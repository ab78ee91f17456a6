"""GUI benchmark: how soon the studio's first page is usable, against gradio itself, and how soon a log line is shown.

1. Start: `gui.py` and a bare one-textbox gradio Blocks app, launched the same way (same launch
   options, a fresh process on a free port, alternately, best of --repeats). A first page is usable
   when GET / answers 200 and, with playwright and a chromium, a fresh browser context navigated
   there right then has rendered it: the studio's tab bar and its workspace bar checked (the page-load
   event answered: READY["studio"]), the bare app's textbox. Timed from the process start; the render
   (navigation to visible) is shown apart. Rows:
   the studio's seconds (target <= 5) and their ratio to the bare app's (target <= 1.3: the studio's
   own imports, tabs and components cost at most 30% over gradio's own start).
2. Log line shown (when playwright and a chromium are installed: `./launch.sh bench` installs them):
   a run folder that looks like a scan in progress, the GUI open in headless chromium (the scan
   panel reattaches to it on page load), lines appended to its log.txt; latency = from the write to
   the moment the line is in the panel's log box on the page. Ratio = worst latency / the panel's
   timer interval; target <= 1.5. The first line, written right after the page load, is shown
   apart (the page is still busy with its load events then).

    python bench/bench_gui.py [--repeats 3] [--lines 10]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, Row, bench_env, free_port, print_rows  # noqa: E402

QUICK = ["--repeats", "1", "--lines", "3"]
BARE_APP = """\
import sys

import gradio as gr

with gr.Blocks() as app:
    gr.Textbox(label="hello", elem_id="hello")
app.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), ssr_mode=False, footer_links=["settings"],
           quiet=True, prevent_thread_lock=True, _frontend=False)
app.block_thread()
"""
# All visible: the first page is usable (the studio's: its tabs, and the workspace's checks that the page-load event
# shows; a page still busy with that event does not answer a click)
READY = {"studio": ("#tab-training-button", "#workspace-model-check .ws-check"), "bare": ("#hello textarea",)}
VIEWPORT = {"width": 1366, "height": 768}
START_TARGET_S = 5.0  # seconds to a usable first page
START_TARGET_RATIO = 1.3  # of the bare app's
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="starts of each app (best is kept)")
    parser.add_argument("--lines", type=int, default=10, help="log lines timed in the browser")
    parser.add_argument("--timeout", type=float, default=180, help="seconds an app may take to start")
    return parser.parse_args(argv)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


class Server:
    """An app started as its own process on a free port; `page_s`: seconds until GET / answered."""

    def __init__(self, argv_for_port: Callable[[int], list[str]], home: Path, timeout: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = home / f"server-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv_for_port(self.port), cwd=REPO, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=bench_env(STUDIO_HOME=str(home)))
        try:
            while not answers(self.url):
                if self.proc.poll() is not None or time.perf_counter() - self.started > timeout:
                    raise RuntimeError(f"{self.url} did not answer:\n" + self.output()[-3000:])
                time.sleep(0.05)
            self.page_s = time.perf_counter() - self.started
        except BaseException:
            self.close()
            raise

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass
class Start:
    """One start of an app: seconds from the process start to GET / answering and to the first page
    usable (rendered, when a browser measured it), and the render alone (navigation to visible)."""
    page_s: float
    usable_s: float
    render_s: float | None = None

    def describe(self) -> str:
        if self.render_s is None:
            return f"GET / {self.page_s:.2f} s"
        return f"usable {self.usable_s:.2f} s (GET / {self.page_s:.2f} s, then rendered in {self.render_s:.2f} s)"


def rendered(browser, url: str, selectors: tuple[str, ...], timeout: float) -> float:
    """Seconds from navigating a fresh browser context (nothing cached) to `url` until `selectors` are visible."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        started = time.perf_counter()
        page.goto(url, wait_until="commit", timeout=timeout * 1000)
        for selector in selectors:
            page.wait_for_selector(selector, state="visible", timeout=timeout * 1000)
        return time.perf_counter() - started
    finally:
        context.close()


def start_once(argv: Callable[[int], list[str]], home: Path, timeout: float, browser=None,
               selectors: tuple[str, ...] = ()) -> Start:
    server = Server(argv, home, timeout)
    try:
        if browser is None:
            return Start(server.page_s, server.page_s)
        render_s = rendered(browser, server.url, selectors, timeout)
        return Start(server.page_s, time.perf_counter() - server.started, render_s)
    except Exception as exc:
        raise RuntimeError(f"{server.url}: {exc}\n" + server.output()[-3000:]) from None
    finally:
        server.close()


def start_times(args, home: Path, browser=None) -> dict[str, Start]:
    """The best start (least seconds to a usable first page) of each app over the repeats, started alternately."""
    bare_app = home / "bare_app.py"
    bare_app.write_text(BARE_APP, encoding="utf-8")
    apps = {"studio": studio_argv, "bare": lambda port: [sys.executable, str(bare_app), str(port)]}
    best: dict[str, Start] = {}
    for i in range(args.repeats):
        for name, argv in apps.items():
            start = start_once(argv, home, args.timeout, browser, READY[name])
            if name not in best or start.usable_s < best[name].usable_s:
                best[name] = start
            print(f"start {i + 1}/{args.repeats} {name:6s}: {start.describe()}")
    return best


def start_rows(studio: Start, bare: Start, repeats: int) -> list[Row]:
    """The GUI-start rows: the studio's seconds to a usable first page, and their ratio to the bare app's."""
    usable = ("GET / answering 200 and chromium showing the first page (the studio's tab bar and its workspace "
              "checked, the bare app's textbox)"
              if studio.render_s is not None else "GET / answering 200 (no browser: the render is not timed)")
    measured = f"studio {studio.describe()}; bare gradio app {bare.describe()}; best of {repeats}"
    return [Row("GUI start: seconds to a usable first page", studio.usable_s, "<=", START_TARGET_S,
                f"seconds (not a ratio) from starting gui.py to {usable}", measured),
            Row("GUI start vs bare gradio app", studio.usable_s / bare.usable_s, "<=", START_TARGET_RATIO,
                "the seconds above / the same for a one-textbox gradio app launched the same way", measured)]


def studio_argv(port: int) -> list[str]:
    return [sys.executable, str(REPO / "gui.py"), "--port", str(port)]


def chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def shown_latency(args, home: Path) -> tuple[list[float], float]:
    """Seconds from each line written to a followed scan's log.txt to the line in the page's log box
    (the first, written right after the page load, first in the list), and the timer interval."""
    from playwright.sync_api import sync_playwright

    from bench.bench_log import MARK, append_step, fake_active_run, timer_interval

    interval = timer_interval()
    run_dir = home / "runs" / "scan-bench"
    fake_active_run(run_dir, "scan", history=100)
    with sync_playwright() as p:
        server = Server(studio_argv, home, args.timeout)
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            page.goto(server.url)
            page.wait_for_function("document.querySelector('#scan-log textarea')?.value.includes('step 99:')")
            latency = []
            for i in range(args.lines + 1):  # the first line, right after the page load, is not timed
                time.sleep(0.5 + (i * 0.618) % 1)  # spread over the phases of the timer
                mark = f"{MARK} {i} "
                written_ms = time.time() * 1000
                append_step(run_dir, 100 + i, f"{mark}of {args.lines}")
                shown_ms = page.wait_for_function(
                    "mark => document.querySelector('#scan-log textarea').value.includes(mark) && Date.now()",
                    arg=mark, polling="raf").json_value()
                latency.append((shown_ms - written_ms) / 1000)
                print(f"line {i}: shown after {latency[-1]:.2f} s" + (" (first after the page load)" if i == 0 else ""))
        finally:
            browser.close()
            server.close()
    return latency, interval


@contextmanager
def headless_chromium():
    """A headless chromium driven by playwright, or None when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or chromium() is None:
        print("the render and the log line in the browser: skipped (needs playwright and chromium: ./launch.sh bench)")
        yield None
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def measure(args) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-gui-") as tmp:
        home = Path(tmp)
        with headless_chromium() as browser:
            best = start_times(args, home, browser)
        rows = start_rows(best["studio"], best["bare"], args.repeats)
        if best["studio"].render_s is None:
            return rows
        (first, *latency), interval = shown_latency(args, home)
    worst, mean = max(latency), statistics.mean(latency)
    print(f"log line shown in the browser: mean {mean:.3f} s, worst {worst:.3f} s over {len(latency)} lines")
    rows.append(Row("log line to shown in the browser", worst / interval, "<=", 1.5,
                    "worst time from a line written to a followed run's log.txt to the line on the page "
                    "/ the panel's timer interval",
                    f"mean {mean:.2f} s, worst {worst:.2f} s at a {interval:g} s interval, {len(latency)} lines; "
                    f"the first line after the page load: {first:.1f} s"))
    return rows


if __name__ == "__main__":
    print_rows(measure(parse_args()))
