"""`python -m core estimate [--config FILE] [--set key=value ...] [--<field> value ...] [--card GB|gpu] [--arch A]
[--measure] [--json]`: the training settings' memory estimate, verdict, savers and expected duration, as the
Training tab's Check settings shows them. The settings are the `train` job's, layered the same way; the base
model and output folder may be left empty (a family is then assumed, see --arch)."""
from __future__ import annotations

import json
import sys

from core.config import ConfigError
from core.estimate.cards import THIS_GPU
from core.estimate.check import check_estimate
from core.jobs.flags import build_parser, layered_values
from core.jobs.protocol import EXIT_INVALID
from core.jobs.registry import JOBS


def main(argv: list[str]) -> int:
    spec = JOBS["train"]
    parser = build_parser(spec)
    parser.prog = "python -m core estimate"
    parser.description = "Estimate the peak GPU memory and the duration of a training run before it starts."
    own = parser.add_argument_group("estimate")
    own.add_argument("--card", default="gpu", help="compare with this card size in GB (8, 12, 16, 24, 48, 80 or "
                     "any), or gpu: the free memory of this machine's first GPU (default; 24 GB without one)")
    own.add_argument("--arch", choices=("sd1", "sd2", "sdxl"), help="the family to assume when no base model is set")
    own.add_argument("--measure", action="store_true", help="measure the U-Net step of these exact settings when "
                     "the table only has a shape scaled from another (seconds to a minute on a CPU)")
    own.add_argument("--json", action="store_true", help="print the estimate as JSON")
    args = parser.parse_args(argv)
    try:
        checked = check_estimate(layered_values(spec, args), THIS_GPU if args.card == "gpu" else args.card,
                                 args.arch, allow_measure=args.measure, in_child=False)
    except ConfigError as err:
        print(f"invalid settings:\n{err}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps(checked.to_json(), indent=1))
        return 0
    print(checked.markdown())
    for saver in checked.savers:
        sets = " ".join(f"--set {key}={json.dumps(value)}" for key, value in saver.changes.items())
        print(f"  {saver.name}: {sets}")
    return 0
