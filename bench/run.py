"""Run every benchmark in bench/ and print one table of the ratios they measured in this run.

    python bench/run.py [--quick] [--only NAME[,NAME]] [--out bench/latest.md]

Each bench/bench_NAME.py exposes `parse_args(argv)`, `measure(args)` returning Row objects
(bench/common.py) and `QUICK`, the arguments of a quick run;
each runs in a fresh process, so one's memory or threads do not weigh on the next, and a crash
is listed in the table instead of ending the run. --quick uses small sizes (a smoke run: the
ratios are not meaningful then).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row, bench_env, format_table, machine_description  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
ORDER = ["train", "cache", "tagger", "memory", "fused", "estimate", "gui", "log"]  # the rest follow by name


def discover() -> list[str]:
    """Names of the benchmarks: bench_NAME.py in this folder."""
    names = [path.stem.removeprefix("bench_") for path in BENCH_DIR.glob("bench_*.py")]
    return sorted(names, key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]",
                        help=f"run only these benchmarks (of: {', '.join(discover())}); may be repeated")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--out", default="", help="also write the table to this file (markdown)")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "ROWS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.only = [name for value in args.only for name in value.split(",") if name]
    unknown = sorted(set(args.only) - set(discover()))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)} (there are: {', '.join(discover())})")
    return args


def run_child(name: str, out: Path, quick: bool) -> None:
    """In the benchmark's own process: run it and write its rows as JSON."""
    module = importlib.import_module(f"bench.bench_{name}")
    rows = module.measure(module.parse_args(module.QUICK if quick else []))
    out.write_text(json.dumps([row.to_json() for row in rows]), encoding="utf-8")


def run_benchmark(name: str, quick: bool) -> tuple[list[Row], str]:
    """Its rows, or no rows and why it failed. Its own output goes straight to the terminal."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", name, str(out)]
        result = subprocess.run(command + (["--quick"] if quick else []), env=bench_env())
        if result.returncode != 0:
            return [], f"exited with code {result.returncode} (its output is above)"
        return [Row(**row) for row in json.loads(out.read_text(encoding="utf-8"))], ""


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child(args.child[0], Path(args.child[1]), args.quick)
        return 0
    names = [name for name in discover() if not args.only or name in args.only]
    machine = machine_description()
    print(f"Machine: {machine}", flush=True)
    rows: list[Row] = []
    failures: dict[str, str] = {}
    started = time.perf_counter()
    for name in names:
        print(f"\n== bench_{name}.py{' (quick)' if args.quick else ''} ==", flush=True)
        began = time.perf_counter()
        found, failure = run_benchmark(name, args.quick)
        rows += found
        if failure:
            failures[f"bench_{name}.py"] = failure
        print(f"== bench_{name}.py: {time.perf_counter() - began:.0f} s ==", flush=True)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    table = format_table(rows, failures, machine)
    table += (f"\n{when}, `bench/run.py{' --quick' if args.quick else ''}`, "
              f"{time.perf_counter() - started:.0f} s in all.\n")
    print("\n" + table, end="")
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
        print(f"written to {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
