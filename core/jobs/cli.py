"""`python -m core <job> [--config FILE] [--set key=value ...] [--run-dir DIR] [--<field> value ...]`
and `python -m core stop RUN_DIR [--wait]`, `python -m core models [--scan DIR ...]` (the model library as JSON).

The flags of each job are generated from its schema model. Values are layered:
schema defaults < --config (a preset or a run's config.json) < --<field> flags < --set.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.config import ConfigError, FieldKind, JobConfig, field_kind, validate
from core.config.presets import read_values_file
from core.jobs.protocol import EXIT_INVALID, JobContext, execute, new_run_dir, process_rank
from core.jobs.registry import JOBS, JobSpec
from core.jobs.run_folder import RunFolder
from core.jobs.runner import grace_period, is_active, request_stop, run_state, stop_job
from core.models.library import main as models_main

LIST_KINDS = ("list", "multi_choice")


def parse_set(item: str, model: type[JobConfig]) -> tuple[str, object]:
    """`key=value`: the value is read as JSON when it parses, else as a plain string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value")
    if key not in model.model_fields:
        raise ConfigError(f"--set: unknown key '{key}' (see --help for this job's parameters)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if field_kind(model, key).kind in LIST_KINDS and not isinstance(value, list):
        value = [value]
    return key, value


def _choice_of(choices: tuple):
    """argparse type for a Literal field: the typed choice whose text was given (150 -> 150)."""
    by_text = {str(c): c for c in choices}

    def choice(text: str):
        if text not in by_text:
            raise ValueError(text)
        return by_text[text]
    return choice


def _empty_is_none(text: str) -> str | None:
    """argparse type for an optional field (`X | None`): an empty value means None, as an empty
    form field; other text goes to the schema, which converts it."""
    return None if text == "" else text


def _add_flag(params: argparse._ArgumentGroup, name: str, kind: FieldKind, help_text: str) -> None:
    """One flag per parameter; a flag not given leaves no attribute (an optional one may be given empty)."""
    flag, unset = f"--{name}", argparse.SUPPRESS
    if kind.kind == "bool":
        params.add_argument(flag, action=argparse.BooleanOptionalAction, default=unset, help=help_text)
    elif kind.kind in LIST_KINDS:
        params.add_argument(flag, nargs="+", default=unset, metavar="VALUE", help=help_text)
    elif kind.kind == "choice":
        params.add_argument(flag, default=unset, help=help_text, type=_choice_of(kind.choices), choices=kind.choices,
                            metavar="{" + ",".join(map(str, kind.choices)) + "}")
    else:
        params.add_argument(flag, default=unset, help=help_text, type=_empty_is_none if kind.optional else None,
                            metavar="VALUE")


def build_parser(spec: JobSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m core {spec.name}", description=spec.summary,
        epilog="Values are layered: defaults < --config < --<field> flags < --set key=value.")
    parser.add_argument("--config", metavar="FILE", help="a preset or a run's config.json")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one parameter (value as JSON, else as text); repeatable")
    parser.add_argument("--run-dir", metavar="DIR", help="run folder (default: a new one under runs/)")
    parser.add_argument("--name", default="", help="a short name for the run folder")
    params = parser.add_argument_group("parameters")
    for name, field in spec.config.model_fields.items():
        help_text = f"{field.description} (default: {field.get_default(call_default_factory=True)!r})" \
            .replace("%", "%%")  # argparse formats help with %
        _add_flag(params, name, field_kind(spec.config, name), help_text)
    return parser


def resolve_config(spec: JobSpec, args: argparse.Namespace) -> JobConfig:
    """Layer the values of one invocation and validate them; raises ConfigError."""
    values: dict = {}
    if args.config:
        values.update(read_values_file(Path(args.config), spec.name))
    values.update({name: getattr(args, name) for name in spec.config.model_fields if hasattr(args, name)})
    for item in args.set:
        key, value = parse_set(item, spec.config)
        values[key] = value
    return validate(spec.config, values, args.config or "command line")


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
