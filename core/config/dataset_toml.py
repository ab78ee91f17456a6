"""kohya sd-scripts' dataset config (`--dataset_config`, TOML) to and from our subsets (core/config/subsets.py).

Reading follows sd-scripts' config_util: a subset's value comes from the subset, else its `[[datasets]]`
entry, else `[general]`; what none of them sets stays empty (the run's setting, as sd-scripts falls back to the
command line). A relative image_dir is read from the TOML file's folder. Keys sd-scripts knows but this trainer
does not do are accepted at their sd-scripts default and refused otherwise; unknown keys are refused. Every
message names the file and the key (`datasets[0].subsets[1].image_dir`).

Writing groups the subsets by their bucket settings into `[[datasets]]` entries (sd-scripts keeps those per
dataset) and writes each subset's own settings under it; TOML is simple enough to write without a library."""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.config.schema import ConfigError
from core.config.subsets import DATASET_KEYS, DatasetSubset
from core.fsutil import atomic_write_text

SUBSET_KEYS = tuple(k for k in DatasetSubset.model_fields if k not in DATASET_KEYS)
INHERITED = tuple(k for k in SUBSET_KEYS if k not in ("image_dir", "is_reg"))  # may sit in a dataset or [general]
# sd-scripts keys this trainer does not do: taken only at sd-scripts' default value (which changes nothing).
UNSUPPORTED = {"color_aug": False, "random_crop": False, "face_crop_aug_range": None, "enable_wildcard": False,
               "secondary_separator": None, "caption_separator": ",", "caption_dropout_every_n_epochs": 0,
               "token_warmup_min": 1, "token_warmup_step": 0, "cache_info": False, "network_multiplier": 1.0}
ELSEWHERE = {"metadata_file": "fine-tuning datasets (metadata_file) are not supported: use caption files beside "
                              "the images"}
DATASET_ONLY = (*DATASET_KEYS, "batch_size", "enable_bucket")


@dataclass
class DatasetToml:
    """A dataset config as the trainer takes it."""
    subsets: list[DatasetSubset]
    batch_size: int | None = None  # the datasets' batch_size (one for all), None when none sets it
    notes: list[str] = field(default_factory=list)  # what was left out or changed, in words


def read_dataset_config(path: str | Path, check_folders: bool = True) -> DatasetToml:
    """The subsets of an sd-scripts dataset TOML; ConfigError naming the file and key of any problem.
    `check_folders`: a subset's image_dir must be an existing folder."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"dataset_config: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    return _parse(data, path, check_folders)


def _parse(data: dict, path: Path, check_folders: bool) -> DatasetToml:
    def fail(where: str, message: str):
        raise ConfigError(f"{path}: {where}: {message}")

    for key in data:
        if key not in ("general", "datasets"):
            fail(key, "unknown key (an sd-scripts dataset config has [general] and [[datasets]])")
    general = _table(data.get("general", {}), "general", fail)
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        fail("datasets", "no [[datasets]] entries with [[datasets.subsets]]")
    result, batch_sizes = DatasetToml([]), {}
    _check_keys(general, "general", (*DATASET_ONLY, *INHERITED), fail, result)
    for d, dataset in enumerate(datasets):
        where = f"datasets[{d}]"
        dataset = _table(dataset, where, fail)
        subsets = dataset.get("subsets")
        if not isinstance(subsets, list) or not subsets:
            fail(where, "no [[datasets.subsets]] entries (each needs image_dir)")
        _check_keys(dataset, where, (*DATASET_ONLY, *INHERITED, "subsets"), fail, result)
        if (size := _pick("batch_size", dataset, general)) is not None:
            batch_sizes[where] = size
        for s, subset in enumerate(subsets):
            where_subset = f"{where}.subsets[{s}]"
            subset = _table(subset, where_subset, fail)
            _check_keys(subset, where_subset, SUBSET_KEYS, fail, result)
            if "image_dir" not in subset:
                fail(where_subset, "image_dir is missing (the subset's folder of images)")
            values = {key: _pick(key, subset, dataset, general) for key in SUBSET_KEYS}
            values.update({key: _pick(key, dataset, general) for key in DATASET_KEYS})
            values = {key: value for key, value in values.items() if value is not None}
            if isinstance(values.get("num_repeats"), int) and values["num_repeats"] < 1:
                result.notes.append(f"{where_subset} ({subset['image_dir']}): num_repeats "
                                    f"{values['num_repeats']}, left out (as sd-scripts does)")
                continue
            result.subsets.append(_subset(values, path, where_subset, fail, check_folders))
    if len(set(batch_sizes.values())) > 1:
        fail("batch_size", "differs between datasets (" + ", ".join(f"{w}: {b}" for w, b in batch_sizes.items())
             + "); this trainer has one train_batch_size: give every dataset the same one")
    result.batch_size = next(iter(batch_sizes.values()), None)
    return result


def _table(value: Any, where: str, fail) -> dict:
    if not isinstance(value, dict):
        fail(where, "expected a table")
    return value


def _check_keys(table: dict, where: str, allowed: tuple, fail, result: DatasetToml) -> None:
    for key, value in table.items():
        if key in allowed:
            continue
        if key in ELSEWHERE:
            fail(f"{where}.{key}", ELSEWHERE[key])
        if key not in UNSUPPORTED:
            fail(f"{where}.{key}", "unknown key" + (" (a dataset's setting: put it in [[datasets]] or [general])"
                                                    if key in DATASET_ONLY else ""))
        if value != UNSUPPORTED[key]:
            fail(f"{where}.{key}", f"not supported by this trainer (only its default {UNSUPPORTED[key]!r}): "
                                   "remove it")
    if table.get("enable_bucket") is False:
        result.notes.append(f"{where}.enable_bucket false: images are always bucketed by aspect ratio here")


def _pick(key: str, *tables: dict) -> Any:
    """The first table's value of `key` that is not None (sd-scripts' search_value)."""
    return next((table[key] for table in tables if table.get(key) is not None), None)


def _subset(values: dict, path: Path, where: str, fail, check_folders: bool) -> DatasetSubset:
    if isinstance(values.get("resolution"), list):
        values["resolution"] = ",".join(map(str, values["resolution"]))
    if isinstance(values.get("resolution"), int):
        values["resolution"] = str(values["resolution"])
    folder = values.get("image_dir")
    if isinstance(folder, str) and folder.strip():
        folder = Path(folder).expanduser()
        values["image_dir"] = str(folder if folder.is_absolute() else (path.parent / folder).resolve())
        if check_folders and not Path(values["image_dir"]).is_dir():
            fail(f"{where}.image_dir", f"folder not found: {values['image_dir']}")
    try:
        return DatasetSubset.model_validate(values)
    except ValidationError as err:
        problem = err.errors()[0]
        key = ".".join(map(str, problem["loc"]))
        fail(f"{where}.{key}" if key else where, f"{problem['msg'].removeprefix('Value error, ')} "
                                                 f"(got {problem.get('input')!r})")


def dataset_config_text(subsets: list[DatasetSubset], batch_size: int | None = None) -> str:
    """The sd-scripts TOML of `subsets` (with `batch_size` in [general] when given)."""
    lines = []
    if batch_size is not None:
        lines += ["[general]", f"batch_size = {batch_size}", ""]
    groups: dict[tuple, list[DatasetSubset]] = {}
    for subset in subsets:
        groups.setdefault(tuple(getattr(subset, key) for key in DATASET_KEYS), []).append(subset)
    for shared, members in groups.items():
        lines.append("[[datasets]]")
        lines += [f"{key} = {_toml_value(_resolution_value(key, value))}"
                  for key, value in zip(DATASET_KEYS, shared) if value is not None]
        for subset in members:
            lines += ["", "  [[datasets.subsets]]"]
            lines += [f"  {key} = {_toml_value(value)}" for key in SUBSET_KEYS
                      if (value := getattr(subset, key)) is not None]
        lines.append("")
    return "\n".join(lines)


def write_dataset_config(path: str | Path, subsets: list[DatasetSubset], batch_size: int | None = None) -> Path:
    """Write the TOML atomically; a file already there is not overwritten (ConfigError)."""
    path = Path(path).expanduser()
    if path.exists():
        raise ConfigError(f"{path}: already exists; choose another name (it is not overwritten)")
    atomic_write_text(path, dataset_config_text(subsets, batch_size))
    return path


def _resolution_value(key: str, value: Any) -> Any:
    return [int(side) for side in value.split(",")] if key == "resolution" else value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")  # a TOML basic string
