"""GUI benchmark: what the studio's GUI costs over gradio itself, and how soon a log line is shown.

1. Start: `gui.py` and a bare one-textbox gradio Blocks app, launched the same way (same launch
   options, a fresh process on a free port, alternately, best of --repeats), timed from the process
   start until GET / answers 200 and until GET /config answers. Ratio = the studio's time to its
   first page / the bare app's; target <= 2 (the studio's own imports and tabs cost at most what
   gradio's own start costs).
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
    gr.Textbox(label="hello")
app.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), ssr_mode=False, footer_links=["settings"],
           quiet=True, prevent_thread_lock=True)
app.block_thread()
"""
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
    """An app started as its own process on a free port; `page_s`/`config_s`: seconds to answer."""

    def __init__(self, argv_for_port: Callable[[int], list[str]], home: Path, timeout: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = home / f"server-{self.port}.log"
        self.log = open(self.log_path, "wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen(argv_for_port(self.port), cwd=REPO, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=bench_env(STUDIO_HOME=str(home)))
        try:
            self.page_s = self._wait(self.url, started, timeout)
            self.config_s = self._wait(self.url + "config", started, timeout)
        except BaseException:
            self.close()
            raise

    def _wait(self, url: str, started: float, timeout: float) -> float:
        while not answers(url):
            if self.proc.poll() is not None or time.perf_counter() - started > timeout:
                raise RuntimeError(f"{url} did not answer:\n" + self.log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.05)
        return time.perf_counter() - started

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def studio_argv(port: int) -> list[str]:
    return [sys.executable, str(REPO / "gui.py"), "--port", str(port)]


def start_times(args, home: Path) -> tuple[dict, dict]:
    """Best (first page, /config) seconds of each app over the repeats, started alternately."""
    bare_app = home / "bare_app.py"
    bare_app.write_text(BARE_APP, encoding="utf-8")
    apps = {"studio": studio_argv, "bare": lambda port: [sys.executable, str(bare_app), str(port)]}
    best = {name: {"page": float("inf"), "config": float("inf")} for name in apps}
    for i in range(args.repeats):
        for name, argv in apps.items():
            server = Server(argv, home, args.timeout)
            server.close()
            best[name] = {"page": min(best[name]["page"], server.page_s),
                          "config": min(best[name]["config"], server.config_s)}
            print(f"start {i + 1}/{args.repeats} {name:6s}: first page {server.page_s:5.2f} s, "
                  f"/config {server.config_s:5.2f} s")
    return best["studio"], best["bare"]


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


def measure(args) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-gui-") as tmp:
        home = Path(tmp)
        studio, bare = start_times(args, home)
        rows = [Row("GUI start vs bare gradio app", studio["page"] / bare["page"], "<=", 2.0,
                    "seconds from starting gui.py to GET / answering 200 / the same for a one-textbox gradio app",
                    f"first page {studio['page']:.1f} vs {bare['page']:.1f} s, /config {studio['config']:.1f} vs "
                    f"{bare['config']:.1f} s, best of {args.repeats}")]
        try:
            import playwright  # noqa: F401
            have_browser = chromium() is not None
        except ImportError:
            have_browser = False
        if not have_browser:
            print("log line shown in the browser: skipped (needs playwright and chromium: ./launch.sh bench)")
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
