"""`python -m core <job> [--config FILE] [--set key=value ...] [--run-dir DIR] [--<field> value ...]`
and `python -m core stop RUN_DIR [--wait]`, `python -m core models [--scan DIR ...]` (the model library as JSON),
`python -m core queue ...` (the job queue: core/queue/cli.py), `python -m core estimate ...` (a training run's
memory and time: core/estimate/cli.py), `python -m core check ...` (the Training tab's Check settings:
core/train/check_cli.py).

The flags of each job are generated from its schema model (core/jobs/flags.py). Values are layered:
schema defaults < --config (a preset or a run's config.json) < --<field> flags < --set.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.config import ConfigError
from core.jobs.flags import build_parser, resolve_config
from core.jobs.protocol import EXIT_INVALID, JobContext, execute, new_run_dir, process_rank
from core.jobs.registry import JOBS
from core.jobs.run_folder import RunFolder
from core.jobs.runner import grace_period, is_active, request_stop, run_state, stop_job
from core.models.library import main as models_main
from core.queue.cli import main as queue_main


def stop_main(argv: list[str]) -> int:
    """`python -m core stop RUN_DIR [--wait]`: the GUI's Stop button on the command line."""
    parser = argparse.ArgumentParser(prog="python -m core stop",
                                     description="Ask a run to stop, as the GUI's Stop button does.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder (under runs/)")
    parser.add_argument("--wait", action="store_true",
                        help="wait until it ends; after the job's grace period, end its processes")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not RunFolder(run_dir).read_status():
        print(f"error: {run_dir} is not a run folder (no readable status.json)", file=sys.stderr)
        return 2
    if not is_active(run_dir):
        print(f"{run_dir}: not running ({run_state(run_dir)})")
        return 0
    if not args.wait:
        request_stop(run_dir)
        print(f"{run_dir}: stop requested")
        return 0
    print(f"{run_dir}: stop requested; its processes are ended if it still runs in {grace_period(run_dir):g} s",
          flush=True)
    print(f"{run_dir}: {stop_job(run_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m core <job> [--config FILE] [--set key=value ...] [--run-dir DIR]\n"
              "       python -m core stop RUN_DIR [--wait]\n"
              "       python -m core models [--scan DIR ...]   (list models as JSON; default: the library folders)"
              "\n       python -m core queue add|chain|list|run|pause|resume|remove|retry|move|stop|on-failure ..."
              "\n       python -m core estimate [--config FILE] [--set key=value ...] [--card GB|gpu]   (memory "
              "and time of a training run)"
              "\n       python -m core check [--config FILE] [--set key=value ...] [--card GB|gpu]   (training "
              "settings checked as the GUI's Check settings does)"
              "\n\njobs:")
        for spec in JOBS.values():
            print(f"  {spec.name:<10} {spec.summary}")
        print("\n`python -m core <job> --help` lists the job's parameters.")
        return 0
    job, rest = argv[0], argv[1:]
    if job == "stop":
        return stop_main(rest)
    if job == "models":
        return models_main(rest)
    if job == "queue":
        return queue_main(rest)
    if job == "estimate":
        from core.estimate.cli import main as estimate_main

        return estimate_main(rest)
    if job == "check":
        from core.train.check_cli import main as check_main

        return check_main(rest)
    if job not in JOBS:
        print(f"error: unknown job '{job}'. Jobs: {', '.join(JOBS)}", file=sys.stderr)
        return 2
    spec = JOBS[job]
    args = build_parser(spec).parse_args(rest)
    run_dir = Path(args.run_dir) if args.run_dir else None
    try:
        cfg = resolve_config(spec, args)
    except ConfigError as err:
        print(f"invalid config for job '{job}':\n{err}", file=sys.stderr)
        if run_dir:
            with JobContext(run_dir, echo=False) as ctx:
                ctx.log(f"invalid config:\n{err}")
                ctx.event("error", message=f"invalid config: {err}")
                ctx.run.update_status(job=job, state="invalid", exit_code=EXIT_INVALID)
        return EXIT_INVALID
    if run_dir is None and process_rank() > 0:
        print("error: with `accelerate launch`, give every process the same --run-dir", file=sys.stderr)
        return EXIT_INVALID
    run_dir = run_dir or new_run_dir(job, args.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    RunFolder(run_dir).write_config(job, cfg)
    return execute(job, cfg, run_dir, spec.load, spec.writes(cfg))
