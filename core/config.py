"""The schema: one typed declaration per parameter of every job.

The GUI form, the CLI flags, presets and run configs are all generated from these models.
Each field is declared with `param(...)`: default, help text, a UI group, a basic/advanced
flag and an optional widget hint; bounds via ge/le, choices via Literal types.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1

Widget = Literal["dir", "dirs", "file", "text", "textarea"]


def param(default: Any, help: str, *, group: str = "Basic", advanced: bool = False,
          widget: Widget | None = None, **constraints: Any) -> Any:
    """Declare a parameter: its default, help text and UI metadata (group, advanced, widget)."""
    extra = {"group": group, "advanced": advanced}
    if widget:
        extra["widget"] = widget
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda d=default: type(d)(d), description=help,
                     json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def field_meta(model: type[BaseModel], name: str) -> dict:
    """UI metadata of one field: group, advanced, widget (with defaults filled in)."""
    extra = model.model_fields[name].json_schema_extra or {}
    return {"group": extra.get("group", "Basic"), "advanced": extra.get("advanced", False),
            "widget": extra.get("widget")}


class JobConfig(BaseModel):
    """Base of every job's arguments: unknown keys are errors, never silently dropped."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


class ConfigError(Exception):
    """An invalid config: the message names the file or field and the problem."""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(config)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{field}' (not a parameter of this job)")
        else:
            lines.append(f"{source}: field '{field}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(model: type[JobConfig], values: dict, source: str) -> JobConfig:
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def validate_partial(model: type[JobConfig], values: dict, source: str) -> None:
    """Check some values (a preset's overrides) field by field: types, bounds, unknown keys.

    Unlike `validate`, fields that are not given are not required here."""
    blank, problems = model.model_construct(), []
    for key, value in values.items():
        if key not in model.model_fields:
            problems.append(f"{source}: unknown key '{key}' (not a parameter of this job)")
            continue
        try:
            model.__pydantic_validator__.validate_assignment(blank, key, value)
        except ValidationError as err:
            problems.append(format_validation_error(err, source))
    if problems:
        raise ConfigError("\n".join(problems))


def _non_empty_paths(value: list[str]) -> list[str]:
    cleaned = [v.strip() for v in value if v and v.strip()]
    if not cleaned:
        raise ValueError("give at least one folder")
    return cleaned


class ScanConfig(JobConfig):
    """Scan dataset folders and report formats, sizes, broken images and missing captions."""
    train_data_dir: list[str] = param(
        [], "Dataset folders to scan (one per line). Kohya-style `N_name` subfolders count as N repeats.",
        widget="dirs")
    caption_extension: str = param(
        ".txt", "Extension of the caption file next to each image (`img.png` + `img.txt`).")
    recursive: bool = param(True, "Also scan subfolders.")
    verify_pixels: bool = param(
        True, "Decode every image fully to find truncated files (slower than reading headers only).",
        group="Checks", advanced=True)
    max_image_pixels: int = param(
        178_956_970, "Images with more pixels than this are reported as possible decompression bombs "
        "and skipped.", group="Checks", advanced=True, ge=1_000_000)

    _check_dirs = field_validator("train_data_dir")(_non_empty_paths)

    @field_validator("caption_extension")
    @classmethod
    def _dot_extension(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(".") or len(value) < 2 or "/" in value or "\\" in value:
            raise ValueError("must start with a dot, like .txt or .caption")
        return value


class DemoConfig(JobConfig):
    """Build a tiny random-weight model and a small captioned dataset, offline, in seconds."""
    out: str = param("demo", "Folder to create: model/ (diffusers), model.safetensors (single file) "
                     "and dataset/.", widget="dir", min_length=1)
    arch: Literal["sd1", "sd2v", "sdxl"] = param(
        "sd1", "Architecture of the tiny model: SD 1.x, SD 2.x v-prediction or SDXL.")
    num_images: int = param(24, "Number of dataset images to generate.", ge=4, le=500)
    seed: int = param(0, "Random seed for weights and images.", advanced=True, group="Advanced")
    overwrite: bool = param(
        False, "Replace an existing demo folder's model and dataset (only folders made by the demo job).",
        advanced=True, group="Advanced")
