"""Log latency: how long after a job writes a log line does the job panel have it?

In-process, no browser: a run folder that looks like a training run in progress (1000 log lines
and progress events already there, so the panel's buffer is full), a writer thread that appends a
log line, a progress and a metric event at random moments (as a trainer step does), and a ticker
that does what the panel's gr.Timer does: call JobPanel.poll every timer interval. Latency = from
the line's write to the return of the poll that has it in the log text. Ratio = worst latency /
the timer interval; target <= 1.5 (a line waits at most one tick, plus the time the poll takes).
The browser round trip on top of this is measured by bench_gui.py.

    python bench/bench_log.py [--lines 20]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row, print_rows, studio_home  # noqa: E402
from core.jobs.run_folder import RunFolder  # noqa: E402

QUICK = ["--lines", "3"]
MARK = "bench line"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20, help="log lines written and timed")
    parser.add_argument("--history", type=int, default=1000, help="log lines and events already in the run")
    return parser.parse_args(argv)


def fake_active_run(run_dir: Path, job: str, history: int) -> None:
    """A run folder in state running, owned by this process, with `history` lines and events."""
    import psutil

    run_dir.mkdir(parents=True)
    me = psutil.Process()
    run = RunFolder(run_dir)
    run.update_status(job=job, state="running", started=time.time(), pid=me.pid,
                      pid_created=me.create_time(), command="python -m core train --config config.json")
    with open(run.log_file(), "w", encoding="utf-8") as log, \
            open(run.events_file(), "w", encoding="utf-8") as events:
        for step in range(history):
            log.write(f"step {step}: loss 0.1234, lr 1e-05\n")
            events.write(json.dumps({"event": "progress", "step": step, "total": 10**6, "time": time.time()}) + "\n")


def append_step(run_dir: Path, step: int, text: str) -> float:
    """What a trainer step leaves in the run folder; returns when the log line was written."""
    with open(RunFolder(run_dir).events_file(), "a", encoding="utf-8") as events:
        events.write(json.dumps({"event": "progress", "step": step, "total": 10**6, "time": time.time()}) + "\n")
        events.write(json.dumps({"event": "metric", "name": "loss", "step": step, "value": 0.1}) + "\n")
    with open(RunFolder(run_dir).log_file(), "a", encoding="utf-8") as log:
        log.write(text + "\n")
    return time.perf_counter()


def new_panel(job: str):
    import gradio as gr

    from tabs.job_panel import JobPanel

    with gr.Blocks():
        return JobPanel(job)


def timer_interval() -> float:
    """Seconds between two polls of a followed run: the interval of the job panel's gr.Timer."""
    return float(new_panel("train").timer.value)


def measure(args) -> list[Row]:
    panel = new_panel("train")
    interval = float(panel.timer.value)
    rng = random.Random(0)
    written: dict[str, float] = {}
    seen: dict[str, float] = {}
    poll_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-log-") as tmp, studio_home(Path(tmp)):
        from core.fsutil import runs_root

        run_dir = runs_root() / "train-bench"
        fake_active_run(run_dir, "train", args.history)
        run = panel.reattach()[panel.run]  # what a page load does
        done = threading.Event()

        def writer() -> None:
            for i in range(args.lines):
                time.sleep(rng.uniform(0.3, 1.7) * interval)  # lands anywhere between two ticks
                written[f"{MARK} {i} "] = append_step(run_dir, args.history + i, f"{MARK} {i} of {args.lines}")
            done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        next_tick = time.perf_counter()
        while not (done.is_set() and len(seen) == len(written)):
            next_tick += interval
            time.sleep(max(0.0, next_tick - time.perf_counter()))
            started = time.perf_counter()
            updates = panel.poll(run)
            now = time.perf_counter()
            poll_seconds.append(now - started)
            run = updates[panel.run]
            text = updates.get(panel.log, "")
            for mark in [m for m in written if m not in seen]:
                if mark in text:
                    seen[mark] = now
        thread.join()
    latency = [seen[m] - written[m] for m in written]
    worst, mean = max(latency), statistics.mean(latency)
    print(f"timer interval {interval:.2f} s; {len(latency)} lines; latency mean {mean:.3f} s, worst {worst:.3f} s; "
          f"poll takes {1000 * statistics.mean(poll_seconds):.1f} ms on average "
          f"({args.history} lines and events already followed)")
    return [Row("log line to JobPanel.poll", worst / interval, "<=", 1.5,
                "worst time from a line written to log.txt to the poll that returns it / the panel's timer interval",
                f"mean {mean:.2f} s, worst {worst:.2f} s at a {interval:g} s interval, "
                f"poll {1000 * statistics.mean(poll_seconds):.0f} ms, {len(latency)} lines")]


if __name__ == "__main__":
    print_rows(measure(parse_args()))
