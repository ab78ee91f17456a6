"""`python -m core estimate [--config FILE] [--set key=value ...] [--<field> value ...] [--card GB|gpu] [--arch A]
[--measure] [--json]`: the training settings' memory estimate, verdict, savers and expected duration, as the
Training tab's Check settings shows them. The settings are the `train` job's, layered the same way; the base
model and output folder may be left empty (a family is then assumed, see --arch)."""
from __future__ import annotations

import argparse
import json
import sys

from core.config import ConfigError
from core.estimate.cards import THIS_GPU
from core.estimate.check import Checked, check_estimate
from core.jobs.flags import build_parser, layered_values
from core.jobs.protocol import EXIT_INVALID
from core.jobs.registry import JOBS


def settings_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """The `train` job's flags with --card and --json (`python -m core estimate` and `check`): the parser and its
    own group, for more options."""
    parser = build_parser(JOBS["train"])
    parser.prog, parser.description = prog, description
    own = parser.add_argument_group(prog.split()[-1])
    own.add_argument("--card", default="gpu", help="compare with this card size in GB (8, 12, 16, 24, 48, 80 or "
                     "any), or gpu: the free memory of this machine's first GPU (default; 24 GB without one)")
    own.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser, own


def estimate_of(args: argparse.Namespace, values: dict, allow_measure: bool = False) -> Checked:
    """The estimate of `values` against --card (ConfigError, ValueError: settings or card not usable)."""
    return check_estimate(values, THIS_GPU if args.card == "gpu" else args.card, getattr(args, "arch", None),
                          allow_measure=allow_measure, in_child=False)


def estimate_text(checked: Checked) -> str:
    """The estimate as Check settings shows it, each saver with the --set options that apply it."""
    lines = [checked.markdown()]
    for saver in checked.savers:
        sets = " ".join(f"--set {key}={json.dumps(value)}" for key, value in saver.changes.items())
        lines.append(f"  {saver.name}: {sets}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser, own = settings_parser("python -m core estimate",
                                  "Estimate the peak GPU memory and the duration of a training run before it starts.")
    own.add_argument("--arch", choices=("sd1", "sd2", "sdxl"), help="the family to assume when no base model is set")
    own.add_argument("--measure", action="store_true", help="measure the U-Net step of these exact settings when "
                     "the table only has a shape scaled from another (seconds to a minute on a CPU)")
    args = parser.parse_args(argv)
    try:
        checked = estimate_of(args, layered_values(JOBS["train"], args), allow_measure=args.measure)
    except ConfigError as err:
        print(f"invalid settings:\n{err}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(checked.to_json(), indent=1) if args.json else estimate_text(checked))
    return 0
