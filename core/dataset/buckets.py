"""Aspect-ratio bucketing (NovelAI's method) with the same buckets as kohya sd-scripts.

Every image gets a bucket (a training size whose sides are multiples of the step), the size it is
resized to so that it covers the bucket, and the centre crop taken from the resized image.
`plan_buckets` reads image headers only; `crop_to_bucket` applies a plan to the decoded image,
`training_image` decodes and crops a planned image. The `bucket` job writes the plan to
`buckets.json` in its run folder (the Buckets tab and the latent cache read it); a bad image is
reported and skipped; a stopped plan is written partial.

Size limits: an image with more than max_image_pixels is refused from its header (images.py), and
a plan is refused (`plan_problem`) when its resize would exceed max_image_pixels or the image is
far more elongated than its bucket: a 322-byte 40000x2 PNG would otherwise be enlarged to
5,120,000x256 to fill a 1024x256 bucket. Plans within the limits are kohya's.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from core.config import BucketConfig, BucketSettings, DatasetSettings
from core.dataset.discovery import find_images
from core.dataset.images import DEFAULT_MAX_PIXELS, ImageError, open_image, probe_image
from core.fsutil import atomic_write_json
from core.jobs.protocol import JobContext, JobStopped

PROGRESS_EVERY = 8
# An image is "strongly upscaled" when its resized size has more than this many times its
# original pixels (a linear scale above sqrt(2) ~ 1.41): detail is invented, the result is soft.
STRONG_UPSCALE_AREA = 2.0
# An image whose aspect ratio is more than this many times its bucket's (wider or taller) is not
# planned: its centre crop would keep under a quarter of it, and a strip enlarged to fill a bucket's
# short side takes memory out of all proportion to its file. With upscaling the bucket of such an
# image is the widest (or tallest) one, so the limit is 4x the widest bucket: 16:1 with the default
# buckets (1024x256). kohya's select_bucket has no limit; bucket_no_upscale never comes near it.
MAX_ASPECT_BEYOND_BUCKET = 4.0

Size = tuple[int, int]
Crop = tuple[int, int, int, int]


@dataclass(frozen=True)
class BucketAssignment:
    path: Path     # the image
    original: Size  # (w, h) after EXIF orientation
    bucket: Size    # (w, h) the training size, a multiple of the step
    resized: Size   # (w, h) the image is resized to before cropping (covers the bucket)
    crop: Crop      # (left, top, right, bottom) in the resized image; right - left == bucket w
    repeats: int

    def as_dict(self) -> dict:
        return {"path": str(self.path), "original": list(self.original),
                "bucket": list(self.bucket), "resized": list(self.resized),
                "crop": list(self.crop), "repeats": self.repeats}

    @classmethod
    def from_dict(cls, d: dict) -> BucketAssignment:
        return cls(Path(d["path"]), tuple(d["original"]), tuple(d["bucket"]), tuple(d["resized"]),
                   tuple(d["crop"]), int(d["repeats"]))


def make_buckets(resolution: Size, min_reso: int, max_reso: int, step: int) -> list[Size]:
    """The predefined buckets of kohya's `make_bucket_resolutions`, sorted by (w, h).

    All have at most the area of `resolution`: the largest square, then for each width from
    min_reso to max_reso the tallest height (a multiple of step, at most max_reso) that fits,
    both ways round."""
    area = resolution[0] * resolution[1]
    side = int(math.sqrt(area) // step) * step
    buckets = {(side, side)}
    for width in range(min_reso, max_reso + 1, step):
        height = min(max_reso, int((area // width) // step) * step)
        if height >= min_reso:
            buckets.update({(width, height), (height, width)})
    return sorted(buckets)


def assign_bucket(size: Size, buckets: list[Size], resolution: Size, step: int,
                  no_upscale: bool) -> tuple[Size, Size, Crop]:
    """(bucket, resized, crop) for an image of `size`, as kohya's BucketManager.select_bucket.

    `buckets` (from make_buckets) is used only when upscaling is allowed; with `no_upscale` the
    bucket comes from the image itself. ValueError when the image is too small or too narrow
    to give a bucket (a side under the step with `no_upscale`)."""
    width, height = size
    aspect = width / height
    if not no_upscale:
        bucket = size if size in buckets else buckets[_closest_aspect(buckets, aspect)]
        if aspect > bucket[0] / bucket[1]:  # relatively wider than the bucket: fit its height
            scale = bucket[1] / height
        else:
            scale = bucket[0] / width
        resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    else:
        resized = _downscaled(size, resolution[0] * resolution[1], step)
        bucket = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
        if min(bucket) < step:
            raise ValueError(f"{width}x{height} gives no bucket with bucket_no_upscale: resized "
                             f"to {resized[0]}x{resized[1]}, a side is under bucket_reso_steps "
                             f"({step})")
    left, top = (resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2
    return bucket, resized, (left, top, left + bucket[0], top + bucket[1])


def _closest_aspect(buckets: list[Size], aspect: float) -> int:
    """Index of the bucket with the nearest aspect ratio; the first one on a tie (as np.argmin)."""
    ratios = np.array([w / h for w, h in buckets])
    return int(np.abs(ratios - aspect).argmin())


def _downscaled(size: Size, area: int, step: int) -> Size:
    """Kohya's no-upscale size: images over `area` shrink to about `area` keeping their aspect,
    with the width or the height a multiple of step (whichever changes the aspect less)."""
    width, height = size
    if width * height <= area:
        return size
    aspect = width / height
    exact_width = math.sqrt(area * aspect)
    exact_height = area / exact_width

    def to_step(x: float) -> int:
        x = int(x + 0.5)
        return x - x % step

    w_rounded, h_rounded = to_step(exact_width), to_step(exact_height)
    h_of_w, w_of_h = to_step(w_rounded / aspect), to_step(h_rounded * aspect)
    error_w = abs(w_rounded / h_of_w - aspect) if h_of_w else math.inf
    error_h = abs(w_of_h / h_rounded - aspect) if h_rounded else math.inf
    if error_w < error_h:
        return w_rounded, int(w_rounded / aspect + 0.5)
    return int(h_rounded * aspect + 0.5), h_rounded


def plan_problem(original: Size, bucket: Size, resized: Size, max_pixels: int) -> str | None:
    """Why an image of size `original`, planned into `bucket` by a resize to `resized`, is not used
    (None when it is): the rule every planner and loader applies before decoding or resizing."""
    width, height = original
    elongation = (width / height) / (bucket[0] / bucket[1])
    if max(elongation, 1 / elongation) > MAX_ASPECT_BEYOND_BUCKET:
        wide = elongation > 1
        limit = MAX_ASPECT_BEYOND_BUCKET * (bucket[0] / bucket[1] if wide else bucket[1] / bucket[0])
        kept = _area(bucket) / _area(resized)
        return (f"{width}x{height} is too {'wide' if wide else 'tall'} for the buckets: its nearest bucket is "
                f"{bucket[0]}x{bucket[1]}, it would be resized to {_size_text(resized)} "
                f"({_area(resized):,} pixels) and the centre crop would keep {kept:.2%} of it; images up to "
                f"{_ratio(limit) if wide else _ratio(1 / limit)} ({MAX_ASPECT_BEYOND_BUCKET:g}x the bucket's shape) "
                f"are used. Crop it into parts no {'wider' if wide else 'taller'} than that, or remove it from "
                "the dataset")
    if _area(resized) > max_pixels:
        return (f"{width}x{height} would be resized to {_size_text(resized)} ({_area(resized):,} pixels) to "
                f"fill its bucket {bucket[0]}x{bucket[1]}, over max_image_pixels ({max_pixels:,}). Crop or remove "
                "the image, lower max_resolution, or raise max_image_pixels")
    return None


def _size_text(size: Size) -> str:
    """"2731x1024", "5,120,000x256": sides of five digits and more grouped."""
    return "x".join(f"{side:,}" if side >= 10_000 else str(side) for side in size)


def _ratio(aspect: float) -> str:
    """"16:1" / "1:16" / "2.5:1" for width / height."""
    def short(x: float) -> str:
        return f"{x:,.1f}".removesuffix(".0")
    return f"{short(aspect)}:1" if aspect >= 1 else f"1:{short(1 / aspect)}"


@lru_cache(maxsize=16)
def _predefined(resolution: Size, min_reso: int, max_reso: int, step: int) -> tuple[Size, ...]:
    return tuple(make_buckets(resolution, min_reso, max_reso, step))


def plan_image(size: Size, cfg: BucketSettings) -> tuple[Size, Size, Crop]:
    """(bucket, resized, crop) of an image of `size` with cfg's buckets; ValueError (its message the
    reason) when it gets no bucket or the plan breaks the size limits (`plan_problem`)."""
    buckets = _predefined(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps)
    bucket, resized, crop = assign_bucket(size, list(buckets), cfg.resolution, cfg.bucket_reso_steps,
                                          cfg.bucket_no_upscale)
    if problem := plan_problem(size, bucket, resized, cfg.max_image_pixels):
        raise ValueError(problem)
    return bucket, resized, crop


def size_problem(size: Size, cfg: DatasetSettings) -> str | None:
    """Why the bucket plan skips an image of `size` (None when it plans it), with cfg's bucket settings;
    a job without them (the scan) gets the answer for the default ones."""
    if not isinstance(cfg, BucketSettings):
        cfg = BucketSettings.model_construct(max_image_pixels=cfg.max_image_pixels)
    try:
        plan_image(size, cfg)
    except ValueError as exc:
        return str(exc)
    return None


def _check_plan(assignment: BucketAssignment, max_pixels: int) -> None:
    if problem := plan_problem(assignment.original, assignment.bucket, assignment.resized, max_pixels):
        raise ImageError(assignment.path, problem)


def crop_to_bucket(image: Image.Image, assignment: BucketAssignment,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The training image: resized as planned (area averaging to shrink, Lanczos to enlarge, as
    kohya) and centre-cropped to the bucket. ImageError if the file changed size since the plan, or
    (before resizing) if the plan breaks the size limits (`plan_problem`)."""
    if image.size != assignment.original:
        raise ImageError(assignment.path, f"size changed since the bucket plan: now "
                         f"{image.size[0]}x{image.size[1]}, planned for "
                         f"{assignment.original[0]}x{assignment.original[1]}; "
                         "plan the buckets again")
    _check_plan(assignment, max_pixels)
    if image.size != assignment.resized:
        shrinking = all(r <= o for r, o in zip(assignment.resized, image.size))
        try:
            image = image.resize(assignment.resized, Image.BOX if shrinking else Image.LANCZOS)
        except MemoryError:
            raise ImageError(assignment.path, f"not enough memory to resize it to "
                             f"{assignment.resized[0]}x{assignment.resized[1]}") from None
    return image.crop(assignment.crop)


def training_image(assignment: BucketAssignment, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A planned image as training sees it (the cache, the trainer and validation load it so): the plan
    is checked before the file is decoded, then decoded (`open_image`) and cropped (`crop_to_bucket`).
    ImageError for anything wrong."""
    _check_plan(assignment, max_pixels)
    return crop_to_bucket(open_image(assignment.path, max_pixels), assignment, max_pixels)


def plan_buckets(cfg: BucketSettings, ctx: JobContext | None = None
                 ) -> tuple[list[BucketAssignment], list[dict]]:
    """(assignments, skipped [{"path", "reason"}]) for every image of cfg.train_data_dir.

    Reads headers only. With a ctx: progress, warnings, and JobStopped when asked to stop."""
    assignments: list[BucketAssignment] = []
    skipped: list[dict] = []
    _plan_into(cfg, ctx, assignments, skipped)
    return assignments, skipped


def _plan_into(cfg: BucketSettings, ctx: JobContext | None, assignments: list[BucketAssignment],
               skipped: list[dict]) -> None:
    """Fill the two lists as far as it gets (a stop leaves them partial)."""
    def skip(path, reason: str) -> None:
        skipped.append({"path": str(path), "reason": reason})
        if ctx:
            ctx.skipped(path, reason)

    images = find_images(cfg.train_data_dir, cfg.recursive, on_error=skip)
    for folder, problem in {i.concept_dir: i.problem for i in images if i.problem}.items():
        skip(folder, problem)
    images = [image for image in images if image.repeats > 0]
    for i, image in enumerate(images):
        if ctx:
            ctx.check_stop()
            if i % PROGRESS_EVERY == 0:
                ctx.progress(i, len(images))
        try:
            info = probe_image(image.path, cfg.max_image_pixels)
            size = (info.width, info.height)
            bucket, resized, crop = plan_image(size, cfg)
        except ImageError as exc:
            skip(image.path, exc.reason)
            continue
        except ValueError as exc:
            skip(image.path, str(exc))
            continue
        assignments.append(BucketAssignment(image.path, size, bucket, resized, crop, image.repeats))
    if ctx:
        ctx.progress(len(images), len(images))


def run(cfg: BucketConfig, ctx: JobContext) -> dict:
    """The `bucket` job: plan every image's bucket, write buckets.json, return the counts."""
    predefined = make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso,
                              cfg.bucket_reso_steps)
    mode = "no upscale" if cfg.bucket_no_upscale else f"{len(predefined)} predefined buckets"
    ctx.log(f"planning buckets: resolution {cfg.resolution[0]}x{cfg.resolution[1]}, sides "
            f"{cfg.min_bucket_reso}..{cfg.max_bucket_reso} step {cfg.bucket_reso_steps}, {mode}")
    assignments: list[BucketAssignment] = []
    skipped: list[dict] = []
    complete = True
    try:
        _plan_into(cfg, ctx, assignments, skipped)
    except JobStopped:
        complete = False
        ctx.log(f"stopped after {len(assignments)} images; the plan is partial")
    plan = build_plan(cfg, assignments, skipped, complete)
    atomic_write_json(ctx.run.bucket_plan_file, plan)
    _log_summary(ctx, plan)
    s = plan["summary"]
    return {"complete": complete, "images": s["images"], "buckets_used": s["buckets_used"],
            "broken": len(skipped), "upscaled": s["upscaled"],
            "mean_crop_loss": s["mean_crop_loss"]}


def build_plan(cfg: BucketConfig, assignments: list[BucketAssignment], skipped: list[dict],
               complete: bool) -> dict:
    """The buckets.json document (its shape is what the Buckets tab and the cache read).

    mean_crop_loss: the fraction of the resized image's pixels cut away by the crop, averaged
    over images (not weighted by repeats). small_buckets: buckets with fewer distinct images
    than train_batch_size. strong_upscale: see STRONG_UPSCALE_AREA. tiny_images: a side under
    min_bucket_reso."""
    images = Counter(a.bucket for a in assignments)
    effective = Counter()
    for a in assignments:
        effective[a.bucket] += a.repeats
    losses = [1 - _area(a.bucket) / _area(a.resized) for a in assignments]
    return {
        "complete": complete,
        "settings": cfg.model_dump(),
        "buckets": [{"bucket": list(b), "images": images[b], "effective": effective[b]}
                    for b in sorted(images)],
        "images": [a.as_dict() for a in assignments],
        "broken": skipped,
        "summary": {
            "images": len(assignments),
            "buckets_used": len(images),
            "upscaled": sum(_area(a.resized) > _area(a.original) for a in assignments),
            "mean_crop_loss": round(sum(losses) / len(losses), 6) if losses else 0.0,
            "small_buckets": [list(b) for b in sorted(images)
                              if images[b] < cfg.train_batch_size],
            "strong_upscale": [str(a.path) for a in assignments
                               if _area(a.resized) > STRONG_UPSCALE_AREA * _area(a.original)],
            "tiny_images": [str(a.path) for a in assignments
                            if min(a.original) < cfg.min_bucket_reso],
        },
    }


def _area(size: Size) -> int:
    return size[0] * size[1]


def _log_summary(ctx: JobContext, plan: dict) -> None:
    s = plan["summary"]
    state = "complete" if plan["complete"] else "PARTIAL (stopped)"
    ctx.log(f"bucket plan {state}: {s['images']} images in {s['buckets_used']} buckets, "
            f"{len(plan['broken'])} skipped")
    for entry in plan["buckets"]:
        w, h = entry["bucket"]
        ctx.log(f"  {w}x{h}: {entry['images']} images ({entry['effective']} with repeats)")
    ctx.log(f"upscaled: {s['upscaled']}; mean crop loss: {s['mean_crop_loss']:.1%}")
    batch = plan["settings"]["train_batch_size"]
    if s["small_buckets"]:
        names = ", ".join(f"{w}x{h}" for w, h in s["small_buckets"])
        ctx.log(f"buckets with fewer images than the batch size ({batch}): {names}")
    if s["strong_upscale"]:
        ctx.log(f"{len(s['strong_upscale'])} images enlarged to more than "
                f"{STRONG_UPSCALE_AREA:g}x their pixels (soft results)")
    if s["tiny_images"]:
        ctx.log(f"{len(s['tiny_images'])} images have a side under min_bucket_reso")
