"""`python -m core check [--config FILE] [--set key=value ...] [--<field> value ...] [--card GB|gpu] [--json]`:
the Training tab's Check settings on the command line. Every problem of the training settings, each naming its
field (errors, then warnings), the dataset and latent cache counts, the command the run would start with, and
the memory and time estimate with its verdict and savers. Nothing is started and nothing of the user's is written
(a step shape the estimate has not measured yet is measured into the studio's cache, as the GUI's check does).
Exit status 0 when the run can start, 2 when a problem must be fixed first."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

from core.config import ConfigError
from core.estimate.cli import estimate_of, estimate_text, settings_parser
from core.jobs.flags import layered_values
from core.jobs.protocol import EXIT_INVALID
from core.jobs.registry import JOBS
from core.train.preflight import check_with_command


def main(argv: list[str]) -> int:
    parser, _ = settings_parser("python -m core check", "Check training settings before a run, as the Training "
                                "tab's Check settings does: problems, dataset, command, memory and time.")
    args = parser.parse_args(argv)
    try:
        values = layered_values(JOBS["train"], args)
    except ConfigError as err:  # a --config that cannot be read, a --set of an unknown key
        print(f"invalid settings:\n{err}", file=sys.stderr)
        return EXIT_INVALID
    found, command = check_with_command(values)
    try:
        checked, no_estimate = estimate_of(args, values), None
    except (ConfigError, ValueError) as err:
        checked, no_estimate = None, str(err)
    if args.json:
        print(json.dumps({"ok": found.ok, "problems": [asdict(p) for p in found.problems], "images": found.images,
                          "cache_missing": found.cache_missing, "command": command,
                          "estimate": checked.to_json() if checked else {"error": no_estimate}}, indent=1))
    else:
        print(found.report())
        if command:
            print(f"\nThe run will start with:\n  {command}")
        print("\n" + (estimate_text(checked) if checked else f"No estimate: {no_estimate}"))
    return 0 if found.ok else EXIT_INVALID
