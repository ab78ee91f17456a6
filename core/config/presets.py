"""Preset files: `{schema_version, job, name, description, values}` where `values` override defaults.

Built-in presets live in `presets/<job>/` (read-only); user presets in `presets/user/<job>/`
(STUDIO_USER_PRESETS overrides the folder). A run's config.json has the same shape, so
`--config` takes either. Old schema versions are migrated by MIGRATIONS before validation.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.config import SCHEMA_VERSION, ConfigError, JobConfig, validate_partial
from core.fsutil import REPO_ROOT, atomic_write_json, studio_home


def _text_encoder_rate_zero_is_empty(values: dict) -> dict:
    """Version 1 -> 2: learning_rate_te 0 meant "same as learning_rate", which is now empty (None);
    0 now keeps the text encoder frozen, as learning_rate_te1/te2 0 always did."""
    try:
        same_as_learning_rate = float(values.get("learning_rate_te")) == 0  # 0, 0.0, "0" as pydantic reads them
    except (TypeError, ValueError):
        same_as_learning_rate = False
    if same_as_learning_rate:
        values["learning_rate_te"] = None
    return values


# job -> {from_version: function(values) -> values at from_version + 1}
MIGRATIONS: dict[str, dict[int, Callable[[dict], dict]]] = {
    "train": {1: _text_encoder_rate_zero_is_empty},
}

PRESET_KEYS = {"schema_version", "job", "name", "description", "values"}


class PresetError(ConfigError):
    """A preset that cannot be used: the message names the file, the field and the problem."""


@dataclass
class Preset:
    name: str
    job: str
    values: dict
    description: str = ""
    schema_version: int = SCHEMA_VERSION
    path: Path | None = None
    builtin: bool = False
    migrated_from: int | None = field(default=None)


def builtin_dir() -> Path:
    return REPO_ROOT / "presets"


def user_dir() -> Path:
    return Path(os.environ.get("STUDIO_USER_PRESETS") or studio_home() / "presets" / "user")


def slugify(name: str) -> str:
    slug = re.sub(r"[^\w\-]+", "-", name.strip().lower(), flags=re.UNICODE).strip("-")
    if not slug:
        raise PresetError(f"preset name {name!r}: use at least one letter or digit")
    return slug[:80]


def config_model(job: str) -> type[JobConfig]:
    from core.jobs.registry import JOBS

    if job not in JOBS:
        raise PresetError(f"unknown job '{job}' (jobs: {', '.join(JOBS)})")
    return JOBS[job].config


def migrate(job: str, version: int, values: dict, source: str) -> dict:
    if version > SCHEMA_VERSION:
        raise PresetError(f"{source}: schema_version {version} is newer than this program's "
                          f"({SCHEMA_VERSION}); update the studio to use it")
    for v in range(version, SCHEMA_VERSION):
        step = MIGRATIONS.get(job, {}).get(v)
        if step:
            values = step(dict(values))
    return values


def check_values(job: str, values: dict, source: str) -> dict:
    """Check override values against the job's schema; returns them unchanged."""
    try:
        validate_partial(config_model(job), values, source)
    except ConfigError as err:
        raise PresetError(str(err)) from None
    return values


def parse_preset(data: object, source: str, job: str | None = None) -> Preset:
    if not isinstance(data, dict):
        raise PresetError(f"{source}: expected a JSON object with 'job' and 'values'")
    unknown = sorted(map(str, set(data) - PRESET_KEYS))
    if unknown:
        raise PresetError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"a preset has {', '.join(sorted(PRESET_KEYS))}")
    file_job = data.get("job")
    if not isinstance(file_job, str):
        raise PresetError(f"{source}: field 'job' is missing or not text")
    try:
        config_model(file_job)
    except PresetError as err:
        raise PresetError(f"{source}: {err}") from None
    if job and file_job != job:
        raise PresetError(f"{source}: this preset is for job '{file_job}', not '{job}'")
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PresetError(f"{source}: field 'schema_version' must be a positive integer")
    values = data.get("values", {})
    if not isinstance(values, dict):
        raise PresetError(f"{source}: field 'values' must be an object of parameter: value")
    for key in ("name", "description"):
        if not isinstance(data.get(key, ""), str):
            raise PresetError(f"{source}: field '{key}' must be text")
    values = check_values(file_job, migrate(file_job, version, values, source), source)
    return Preset(name=data.get("name") or Path(source).stem, job=file_job, values=values,
                  description=data.get("description", ""),
                  migrated_from=version if version != SCHEMA_VERSION else None)


def load_preset(path: Path, job: str | None = None, builtin: bool = False) -> Preset:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PresetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PresetError(f"{path}: cannot read ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PresetError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    preset = parse_preset(data, str(path), job)
    preset.path, preset.builtin = path, builtin
    return preset


def read_values_file(path: Path, job: str) -> dict:
    """Values from a preset or a run's config.json (same format) for `job`."""
    return load_preset(path, job).values


def list_presets(job: str) -> tuple[list[Preset], list[str]]:
    """Built-in then user presets of a job, and the errors of files that could not be loaded."""
    presets, errors = [], []
    for folder, builtin in ((builtin_dir() / job, True), (user_dir() / job, False)):
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                presets.append(load_preset(path, job, builtin))
            except PresetError as err:
                errors.append(str(err))
    return presets, errors


def find_preset(job: str, name: str) -> Preset | None:
    matches = [p for p in list_presets(job)[0] if p.name == name]
    return matches[-1] if matches else None  # a user preset shadows a built-in of the same name


def differences(job: str, values: dict, base: dict) -> dict[str, tuple]:
    """{field: (base value, value)} for every field where `values` differs from `base` (a preset's
    overrides; both filled in with the defaults)."""
    model = config_model(job)
    before = model.model_construct(**base).model_dump(mode="json")
    after = model.model_construct(**values).model_dump(mode="json")
    return {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}


def diff_from_defaults(job: str, values: dict) -> dict:
    """Only the values that differ from the schema defaults (what a preset stores)."""
    return {k: value for k, (_, value) in differences(job, values, {}).items()}


def save_preset(job: str, name: str, values: dict, description: str = "",
                overwrite: bool = False) -> Path:
    """Write a user preset (values stored as overrides of the defaults, so fields left at their
    defaults, such as an empty model path, are neither stored nor checked)."""
    values = diff_from_defaults(job, values)
    check_values(job, values, f"preset '{name}'")
    existing = find_preset(job, name)
    if existing and existing.builtin and not (user_dir() / job / f"{slugify(name)}.json").exists():
        raise PresetError(f"'{name}' is a built-in preset and is read-only: use Save as with a new name")
    path = user_dir() / job / f"{slugify(name)}.json"
    if path.exists() and not overwrite:
        raise PresetError(f"a user preset named '{name}' exists already ({path})")
    atomic_write_json(path, {"schema_version": SCHEMA_VERSION, "job": job, "name": name.strip(),
                             "description": description, "values": values})
    return path


def delete_preset(job: str, name: str) -> Path:
    preset = find_preset(job, name)
    if preset is None:
        raise PresetError(f"no preset named '{name}' for job '{job}'")
    if preset.builtin:
        raise PresetError(f"'{name}' is a built-in preset and cannot be deleted")
    preset.path.unlink()
    return preset.path
