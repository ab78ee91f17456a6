"""The flags of a job on the command line, generated from its schema model, and how one invocation's values are
layered: schema defaults < --config (a preset or a run's config.json) < --<field> flags < --set key=value.
Used by `python -m core <job>` and `python -m core queue add`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import ConfigError, FieldKind, JobConfig, field_kind, validate
from core.config.presets import read_values_file
from core.jobs.registry import JobSpec

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


def _json_rows(text: str) -> list:
    """argparse type for a table field: a JSON list of objects, one per row."""
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError(text)
    return rows


def _add_flag(params: argparse._ArgumentGroup, name: str, kind: FieldKind, help_text: str) -> None:
    """One flag per parameter; a flag not given leaves no attribute (an optional one may be given empty)."""
    flag, unset = f"--{name}", argparse.SUPPRESS
    if kind.kind == "bool":
        params.add_argument(flag, action=argparse.BooleanOptionalAction, default=unset, help=help_text)
    elif kind.kind in LIST_KINDS:
        params.add_argument(flag, nargs="+", default=unset, metavar="VALUE", help=help_text)
    elif kind.kind == "table":
        params.add_argument(flag, default=unset, type=_json_rows, metavar="JSON",
                            help=f"{help_text} As JSON: a list of objects with the keys "
                                 f"{', '.join(kind.record.model_fields)}.")
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
    return validate(spec.config, layered_values(spec, args), args.config or "command line")


def layered_values(spec: JobSpec, args: argparse.Namespace) -> dict:
    """The values of one invocation, layered (--config < --<field> flags < --set), not yet validated."""
    values: dict = {}
    if args.config:
        values.update(read_values_file(Path(args.config), spec.name))
    values.update({name: getattr(args, name) for name in spec.config.model_fields if hasattr(args, name)})
    for item in args.set:
        key, value = parse_set(item, spec.config)
        values[key] = value
    return values
