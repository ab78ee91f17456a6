"""Parameters of the dataset jobs: scan, bucket plan."""
from __future__ import annotations

from pydantic import field_validator, model_validator

from core.config.conditions import when
from core.config.schema import JobConfig, param
from core.filenames import caption_extension_problem

DATA = "Data & captions"  # the section of the dataset, bucket and caption settings


def _non_empty_paths(value: list[str]) -> list[str]:
    cleaned = [v.strip() for v in value if v and v.strip()]
    if not cleaned:
        raise ValueError("give at least one folder")
    return cleaned


class DatasetSettings(JobConfig):
    """Where the images are: shared by every job that reads a dataset."""
    train_data_dir: list[str] = param(
        [], "Dataset folders (one per line). Kohya-style `N_name` subfolders count as N repeats.",
        label="Dataset folders", widget="dirs", group=DATA, workspace="dataset")
    recursive: bool = param(True, "Also read subfolders.", label="Include subfolders", group=DATA)
    max_image_pixels: int = param(
        178_956_970, "Images with more pixels than this, or that the bucket plan would resize to more, are "
        "reported as possible decompression bombs and skipped.", label="Max image pixels", group=DATA,
        advanced=True, ge=1_000_000)

    _check_dirs = field_validator("train_data_dir")(_non_empty_paths)


class LoaderSettings(JobConfig):
    """How images are read: shared by the jobs that run a model over a dataset."""
    max_data_loader_n_workers: int = param(
        2, "Threads (workers) that decode and resize images ahead of the model (in training: while the latent "
        "cache is built).", label="Loader threads", group=DATA, advanced=True, applies=when("cache_latents", True),
        ge=0, le=32)


class CaptionSettings(JobConfig):
    """Where the captions are."""
    caption_extension: str = param(
        ".txt", "Extension of the caption file next to each image (`img.png` + `img.txt`).",
        label="Caption extension", group=DATA)

    @field_validator("caption_extension")
    @classmethod
    def _caption_extension(cls, value: str) -> str:
        value = value.strip()
        if problem := caption_extension_problem(value):
            raise ValueError(problem)
        return value


class MaskSourceSettings(JobConfig):
    """Where each image's loss mask comes from (sd-scripts' names): a mask folder or the alpha channel."""
    conditioning_data_dir: str = param(
        "", "Folder of mask images, one per training image with the same file stem (`cat.png` -> `cat.png` or "
        "`cat.jpg` here) and the same size: white = train, black = ignore, grey = weight (127: half). The red "
        "channel is read, as sd-scripts does.", label="Mask folder", widget="dir", group=DATA,
        applies=when("masked_loss", True))
    alpha_mask: bool = param(
        False, "Use each image's alpha channel as its mask (opaque = train, transparent = ignore); images "
        "without transparency are trained whole.", label="Mask from transparency", group=DATA,
        applies=when("masked_loss", True))


class MaskedLossSettings(JobConfig):
    """Masked loss: train only on the part of each image that matters (sd-scripts' masked_loss)."""
    masked_loss: bool = param(
        False, "Weight the loss of each latent pixel by the image's mask (from the mask folder, or from the "
        "alpha channel with alpha_mask), so only the subject is learned, not its background. The mask is resized "
        "and cropped as its image, reduced to latent size (1/8) and cached with the latents.",
        label="Masked loss", group=DATA)


class MaskSettings(MaskSourceSettings, MaskedLossSettings):  # bases in reverse display order
    """The masked-loss switch and the mask's source (latent cache and trainer)."""


class ScanConfig(MaskSourceSettings, CaptionSettings, DatasetSettings):  # bases in reverse display order
    """Scan dataset folders and report formats, sizes, broken images and missing captions."""
    verify_pixels: bool = param(
        True, "Decode every image fully to find truncated files (slower than reading headers only).",
        label="Decode every image", group="Checks", advanced=True)


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
        "512,512", "Training resolution (size) WIDTH,HEIGHT: every bucket has about this many pixels "
        "(512,512 for SD 1.x, 768,768 for SD 2.x-768, 1024,1024 for SDXL).", label="Resolution", group=DATA,
        essential=True)
    min_bucket_reso: int = param(256, "Smallest bucket side in pixels.", label="Min bucket side", group=DATA,
                                 advanced=True, ge=64)
    max_bucket_reso: int = param(1024, "Largest bucket side in pixels.", label="Max bucket side", group=DATA,
                                 advanced=True, ge=64)
    bucket_reso_steps: int = param(
        64, "Bucket sides are multiples of this (a multiple of 8; 64 as kohya's default, 32 is common "
        "for SDXL).", label="Bucket side step", group=DATA, advanced=True, ge=8)
    bucket_no_upscale: bool = param(
        False, "Never enlarge an image: small images keep their size (their bucket is their size "
        "rounded down to the step); large ones are scaled down to the training area.", label="Never upscale",
        group=DATA)

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
        label="Batch size", group=DATA, ge=1)
