"""`python -m core queue ...`: the job queue on the command line (the same file and rules as the GUI's queue).

  queue add --job JOB [--after ID] [--start] [--config FILE] [--set KEY=VALUE ...] [--<field> VALUE ...]
  queue chain --dataset DIR [--dataset DIR ...] [--model PATH] [--output DIR] [--steps tag,clean,cache,train]
              [--preset JOB=NAME ...] [--config JOB=FILE ...] [--set JOB.KEY=VALUE ...] [--after ID] [--start]
  queue list [--json]
  queue run [--until-empty] [--poll SECONDS]
  queue pause | resume
  queue remove ID | retry ID | move ID up|down
  queue stop [ID] [--wait] [--pause]
  queue on-failure skip|stop
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from core.config import ConfigError, JobConfig, field_meta
from core.config.presets import read_values_file
from core.jobs.flags import build_parser, parse_set, resolve_config
from core.jobs.registry import JOBS
from core.jobs.runner import stop_job
from core.queue import store
from core.queue.chain import CHAIN_STEPS, Step, add_chain
from core.queue.entries import Entry, QueueState
from core.queue.runner import POLL_S, ensure_runner, run, runner_holder

PATH_WIDGETS = ("dir", "dirs", "file", "files")
EXIT_INVALID = 2


def absolute_paths(model: type[JobConfig], values: dict) -> dict:
    """The path fields (their widget says so) made absolute from the current folder: the queued job runs
    elsewhere, later."""
    def absolute(value):
        return os.path.abspath(value) if isinstance(value, str) and value.strip() else value

    return {key: ([absolute(v) for v in value] if isinstance(value, list) else absolute(value))
            if field_meta(model, key)["widget"] in PATH_WIDGETS else value for key, value in values.items()}


def _started(start: bool) -> str:
    if not start:
        return "run it with `python -m core queue run`, or add --start"
    pid = ensure_runner()
    return f"the queue runner started (pid {pid})" if pid else "the queue runner that runs already takes it"


def add_main(argv: list[str]) -> int:
    pre = argparse.ArgumentParser(prog="python -m core queue add", add_help=False,
                                  description="Queue a job with its settings frozen now.")
    pre.add_argument("--job", choices=list(JOBS), metavar="JOB", help=f"the job to queue: {', '.join(JOBS)}")
    pre.add_argument("--after", metavar="ID", help="run it after this entry (skipped if that one fails)")
    pre.add_argument("--start", action="store_true", help="start the queue runner if none runs")
    known, rest = pre.parse_known_args(argv)
    if known.job is None:
        pre.print_help()
        print("\nThe job's own flags follow --job JOB (`queue add --job JOB --help` lists them).")
        return 0 if any(a in ("-h", "--help") for a in argv) else EXIT_INVALID
    spec = JOBS[known.job]
    parser = build_parser(spec)
    parser.prog = f"python -m core queue add --job {spec.name}"
    args = parser.parse_args(rest)
    if args.run_dir or args.name:
        parser.error("--run-dir, --name: a queued job gets a run folder named after its entry when it starts")
    try:
        values = resolve_config(spec, args).model_dump(mode="json")
        entry = store.add(spec.name, absolute_paths(spec.config, values), after=known.after)
    except ConfigError as err:
        print(f"invalid config for job '{spec.name}':\n{err}", file=sys.stderr)
        return EXIT_INVALID
    print(f"queued {entry.id}: {entry.summary}; {_started(known.start)}")
    return 0


def _job_items(items: list[str], flag: str, sep: str, jobs: list[str]) -> list[tuple[str, str]]:
    """The `JOB<sep>rest` items of a chain flag, JOB one of the chain's `jobs`."""
    pairs = []
    for item in items:
        job, found, rest = item.partition(sep)
        if not found or job not in jobs:
            raise ConfigError(f"{flag} {item!r}: expected JOB{sep}..., JOB one of the steps ({', '.join(jobs)})")
        pairs.append((job, rest))
    return pairs


def chain_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core queue chain",
        description="Queue a dataset's preparation and training, each step after the one before: a step that "
                    "fails skips the steps after it.")
    parser.add_argument("--dataset", action="append", required=True, metavar="DIR",
                        help="a dataset folder (repeatable)")
    parser.add_argument("--model", default="", help="the base model (fills the steps that take one)")
    parser.add_argument("--output", default="", metavar="DIR", help="the output folder (the training's)")
    parser.add_argument("--steps", default=",".join(CHAIN_STEPS),
                        help=f"the jobs in order, comma-separated (default: {','.join(CHAIN_STEPS)})")
    parser.add_argument("--preset", action="append", default=[], metavar="JOB=NAME", help="a step's preset")
    parser.add_argument("--config", action="append", default=[], metavar="JOB=FILE",
                        help="a step's settings from a preset file or a run's config.json")
    parser.add_argument("--set", action="append", default=[], metavar="JOB.KEY=VALUE",
                        help="one setting of a step (value as JSON, else text)")
    parser.add_argument("--after", metavar="ID", help="the first step runs after this entry")
    parser.add_argument("--start", action="store_true", help="start the queue runner if none runs")
    args = parser.parse_args(argv)
    jobs = [job.strip() for job in args.steps.split(",") if job.strip()]
    try:
        unknown = [job for job in jobs if job not in JOBS]
        if unknown or len(set(jobs)) < len(jobs):
            raise ConfigError(f"--steps {args.steps!r}: each step once, a job of {', '.join(JOBS)}")
        steps = {job: Step(job) for job in jobs}
        for job, name in _job_items(args.preset, "--preset", "=", jobs):
            steps[job].preset = name
        for job, path in _job_items(args.config, "--config", "=", jobs):
            steps[job].values.update(read_values_file(Path(path), job))
        for job, item in _job_items(args.set, "--set", ".", jobs):
            key, value = parse_set(item, JOBS[job].config)
            steps[job].values[key] = value
        model, output = (os.path.abspath(p) if p else p for p in (args.model, args.output))
        for step in steps.values():
            step.values = absolute_paths(JOBS[step.job].config, step.values)
        entries = add_chain([steps[job] for job in jobs], [os.path.abspath(d) for d in args.dataset], model, output,
                            args.after)
    except ConfigError as err:
        print(f"invalid chain:\n{err}", file=sys.stderr)
        return EXIT_INVALID
    for entry in entries:
        print(f"queued {entry.id}: {entry.summary}" + (f" (after {entry.after})" if entry.after else ""))
    print(_started(args.start))
    return 0


def format_queue(queue: QueueState) -> str:
    """The queue as a table for a terminal."""
    holder = runner_holder()
    state = "paused" + (f" ({queue.pause_reason})" if queue.pause_reason else "") if queue.paused else "active"
    lines = [*([f"NOTICE: {queue.notice}", ""] if queue.notice else []),
             f"queue {store.queue_file()}: {state}; on failure: {queue.on_failure}; "
             + (f"runner pid {holder['pid']}" if holder else "no runner running")]
    if not queue.entries:
        return "\n".join([*lines, "(empty)"])
    lines.append(f"{'#':>3}  {'id':<6}  {'status':<11}  what")
    for i, entry in enumerate(queue.entries, 1):
        lines.append(f"{i:>3}  {entry.id:<6}  {entry.status:<11}  {entry.summary}")
        lines += [f"{'':>26}{text}" for text in _details(entry)]
    return "\n".join(lines)


def _details(entry: Entry) -> list[str]:
    return [text for text in (f"after {entry.after}" if entry.after else "", entry.reason,
                              f"run: {entry.run_dir}" if entry.run_dir else "",
                              f"resumes from: {entry.resume_from}" if entry.resume_from else "") if text]


def list_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core queue list", description="Show the queue.")
    parser.add_argument("--json", action="store_true", help="the queue as JSON (with the runner's pid)")
    args = parser.parse_args(argv)
    queue = store.read_queue()
    if args.json:
        print(json.dumps({**queue.model_dump(mode="json"), "runner": runner_holder()}, indent=2, ensure_ascii=False))
    else:
        print(format_queue(queue))
    return 0


def run_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core queue run",
                                     description="Run the queue's entries, one after another (one runner at a time).")
    parser.add_argument("--until-empty", action="store_true",
                        help="end when nothing is left to run (nothing waiting, or the queue paused)")
    parser.add_argument("--poll", type=float, default=POLL_S, metavar="SECONDS", help="how often to look")
    args = parser.parse_args(argv)
    try:
        return run(until_empty=args.until_empty, poll_s=args.poll)
    except KeyboardInterrupt:
        print("the queue runner was interrupted; a running job goes on (the next runner adopts it)")
        return 0


def stop_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m core queue stop",
                                     description="Stop the running entry, as the job panel's Stop does.")
    parser.add_argument("id", nargs="?", metavar="ID", help="the entry (default: whichever runs)")
    parser.add_argument("--wait", action="store_true",
                        help="wait until it ends; after the job's grace period, end its processes")
    parser.add_argument("--pause", action="store_true", help="also pause the queue: nothing starts after it")
    args = parser.parse_args(argv)
    stopped = store.stop_running(args.id, pause_queue=args.pause)
    if not stopped:
        print("nothing is running")
    for entry in stopped:
        if not entry.run_dir:
            print(f"{entry.label()} is starting: stop it again in a moment")
        elif args.wait:
            print(f"{entry.label()}: {stop_job(Path(entry.run_dir))}")
        else:
            print(f"{entry.label()}: stop requested ({entry.run_dir})")
    return 0


def _simple(argv: list[str]) -> int:
    """The commands that take an id or a word: pause, resume, remove, retry, move, on-failure."""
    parser = argparse.ArgumentParser(prog="python -m core queue")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pause", help="start nothing new (the running job goes on)")
    commands.add_parser("resume", help="go on with the waiting entries")
    commands.add_parser("remove", help="remove an entry (not the running one)").add_argument("id", metavar="ID")
    commands.add_parser("retry", help="queue a finished entry again").add_argument("id", metavar="ID")
    move = commands.add_parser("move", help="move an entry one place up or down")
    move.add_argument("id", metavar="ID")
    move.add_argument("direction", choices=("up", "down"))
    commands.add_parser("on-failure", help="skip: go on with the next entry; stop: pause the queue") \
        .add_argument("mode", choices=("skip", "stop"))
    args = parser.parse_args(argv)
    if args.command == "pause":
        store.pause()
        print("queue paused: the running job goes on, nothing new starts")
    elif args.command == "resume":
        store.resume()
        print("queue resumed" + ("" if runner_holder() else " (no runner runs: `python -m core queue run`)"))
    elif args.command == "remove":
        print(f"removed {store.remove(args.id).label()}")
    elif args.command == "retry":
        print("queued again: " + ", ".join(entry.label() for entry in store.retry(args.id)))
    elif args.command == "move":
        store.move(args.id, args.direction)
        print(f"moved {args.id} {args.direction}")
    else:
        store.set_on_failure(args.mode)
        print(f"on failure: {args.mode}")
    return 0


COMMANDS = {"add": add_main, "chain": chain_main, "list": list_main, "run": run_main, "stop": stop_main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n", 1)[1].rstrip())
        return 0
    command = COMMANDS.get(argv[0])
    try:
        return command(argv[1:]) if command else _simple(argv)
    except store.QueueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
