"""The schema: one typed declaration per parameter of every job.

The GUI form, the CLI flags, presets and run configs are all generated from these models.
Each field is declared with `param(...)`: default, help text, a UI group, a basic/advanced
flag and an optional widget hint; bounds via ge/le, choices via Literal types.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
        field = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{field}' (not a parameter of this job)")
        elif not field:  # a check across fields: its message names them
            lines.append(f"{source}: {message}")
        else:
            lines.append(f"{source}: field '{field}': {message} (got {e.get('input')!r})")
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


class DatasetSettings(JobConfig):
    """Where the images are: shared by every job that reads a dataset."""
    train_data_dir: list[str] = param(
        [], "Dataset folders (one per line). Kohya-style `N_name` subfolders count as N repeats.",
        widget="dirs")
    recursive: bool = param(True, "Also read subfolders.")
    max_image_pixels: int = param(
        178_956_970, "Images with more pixels than this are reported as possible decompression bombs "
        "and skipped.", group="Checks", advanced=True, ge=1_000_000)

    _check_dirs = field_validator("train_data_dir")(_non_empty_paths)


class ScanConfig(DatasetSettings):
    """Scan dataset folders and report formats, sizes, broken images and missing captions."""
    caption_extension: str = param(
        ".txt", "Extension of the caption file next to each image (`img.png` + `img.txt`).")
    verify_pixels: bool = param(
        True, "Decode every image fully to find truncated files (slower than reading headers only).",
        group="Checks", advanced=True)

    @field_validator("caption_extension")
    @classmethod
    def _dot_extension(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(".") or len(value) < 2 or "/" in value or "\\" in value:
            raise ValueError("must start with a dot, like .txt or .caption")
        return value


def parse_resolution(value) -> tuple[int, int]:
    """"512" / "512,768" / 512 / [512, 768] -> (width, height)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    parts = [p.strip() for p in str(value).replace("x", ",").split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError("expected WIDTH,HEIGHT like 512,512 or 1024,1024")
    return int(parts[0]), int(parts[1])


class BucketSettings(DatasetSettings):
    """Aspect-ratio bucketing (NovelAI's method, with kohya sd-scripts' names and defaults)."""
    max_resolution: str = param(
        "512,512", "Training resolution WIDTH,HEIGHT: every bucket has about this many pixels "
        "(512,512 for SD 1.x, 768,768 for SD 2.x-768, 1024,1024 for SDXL).", group="Buckets")
    min_bucket_reso: int = param(256, "Smallest bucket side in pixels.", group="Buckets", ge=64)
    max_bucket_reso: int = param(1024, "Largest bucket side in pixels.", group="Buckets", ge=64)
    bucket_reso_steps: int = param(
        64, "Bucket sides are multiples of this (a multiple of 8; 64 as kohya's default, 32 is common "
        "for SDXL).", group="Buckets", ge=8)
    bucket_no_upscale: bool = param(
        False, "Never enlarge an image: small images keep their size (their bucket is their size "
        "rounded down to the step); large ones are scaled down to the training area.", group="Buckets")

    @field_validator("max_resolution")
    @classmethod
    def _resolution_text(cls, value: str) -> str:
        width, height = parse_resolution(value)
        return f"{width},{height}"

    @property
    def resolution(self) -> tuple[int, int]:
        return parse_resolution(self.max_resolution)

    @model_validator(mode="after")
    def _consistent_buckets(self):
        if self.bucket_reso_steps % 8:
            raise ValueError(f"bucket_reso_steps must be a multiple of 8 (VAE downscale), "
                             f"not {self.bucket_reso_steps}")
        if self.min_bucket_reso > self.max_bucket_reso:
            raise ValueError(f"min_bucket_reso ({self.min_bucket_reso}) is larger than "
                             f"max_bucket_reso ({self.max_bucket_reso})")
        width, height = self.resolution
        if min(width, height) < self.min_bucket_reso or max(width, height) > self.max_bucket_reso:
            raise ValueError(f"max_resolution {width},{height} is outside min_bucket_reso..max_bucket_reso "
                             f"({self.min_bucket_reso}..{self.max_bucket_reso})")
        return self


class BucketConfig(BucketSettings):
    """Plan the aspect-ratio buckets of a dataset: which bucket, resize and crop for each image."""
    train_batch_size: int = param(
        1, "Batch size you will train with: buckets with fewer images than this are flagged.",
        group="Buckets", ge=1)


class CacheConfig(BucketSettings):
    """Encode every image of a dataset with the model's VAE once, so training reads latents."""
    pretrained_model_name_or_path: str = param(
        "", "Base model: a diffusers folder or a single .safetensors/.ckpt file (SD 1.x, 2.x, SDXL).",
        widget="file", min_length=1, group="Model")
    vae: str = param(
        "", "Optional separate VAE (diffusers folder or single file), e.g. a fixed fp16 SDXL VAE.",
        widget="file", group="Model")
    latents_dir: str = param(
        "", "Folder for the cache files; empty: beside each image in the dataset (as kohya does).",
        widget="dir", group="Cache")
    flip_aug: bool = param(False, "Also cache the latents of the horizontally flipped image.", group="Cache")
    vae_batch_size: int = param(4, "Images encoded at once (same bucket).", group="Cache", ge=1, le=256)
    no_half_vae: bool = param(
        False, "Run the VAE in fp32 on GPU (SDXL's original VAE is always run in fp32).",
        group="Cache", advanced=True)
    max_data_loader_n_workers: int = param(
        2, "Threads that decode and resize images ahead of the VAE.", group="Cache", advanced=True,
        ge=0, le=32)


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
