"""The scan job: what is in a dataset, what is broken, what is missing a caption or a mask.

Writes `report.json` in the run folder (the Dataset tab reads it). A bad image is reported
with its reason and skipped; a stopped scan still writes its partial report ("complete": false).
With a mask folder (conditioning_data_dir) or alpha_mask, each readable image's mask is checked
(core.dataset.masks.mask_problem: missing, unreadable, of another size, empty) and listed in
"mask_problems"; each image entry names its "mask" (a file, "alpha", or null).
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from core.captions.files import CaptionText, read_caption_detailed
from core.config import ScanConfig
from core.dataset.buckets import size_problem
from core.dataset.discovery import DatasetImage, check_folders, find_images
from core.dataset.images import ImageError, ImageInfo, probe_image
from core.dataset.masks import MaskFinder, MaskSource, mask_problem
from core.fsutil import atomic_write_json
from core.jobs.protocol import JobContext, JobStopped

PROGRESS_EVERY = 8

SIZE_BINS = [(512, "<512"), (768, "512-767"), (1024, "768-1023"), (1536, "1024-1535"),
             (2048, "1536-2047"), (math.inf, "2048+")]

# Aspect ratio (width / height) bins, tall to wide: an image goes to the nearest named ratio
# (in log space), the two ends catch everything beyond them.
ASPECT_RATIOS = [(1 / 2, "1:2 or taller"), (9 / 16, "9:16"), (2 / 3, "2:3"), (3 / 4, "3:4"),
                 (1.0, "1:1"), (4 / 3, "4:3"), (3 / 2, "3:2"), (16 / 9, "16:9"),
                 (2.0, "2:1 or wider")]


def size_bin(width: int, height: int) -> str:
    """Histogram label for the shorter side of an image."""
    shorter = min(width, height)
    return next(label for upper, label in SIZE_BINS if shorter < upper)


def aspect_bin(width: int, height: int) -> str:
    """Histogram label of the named aspect ratio nearest to width:height."""
    ratio = math.log(max(width, 1) / max(height, 1))
    return min(ASPECT_RATIOS, key=lambda entry: abs(math.log(entry[0]) - ratio))[1]


def caption_status(caption: CaptionText) -> str:
    """"missing" (no caption file, or something else at its path), "empty" (only whitespace) or "ok"."""
    if not caption.encoding:
        return "missing"
    return "ok" if caption.text.strip() else "empty"


def run(cfg: ScanConfig, ctx: JobContext) -> dict:
    """Scan cfg.train_data_dir, write report.json, return the counts."""
    roots = check_folders(cfg.train_data_dir)
    invalid: list[dict] = []
    images = find_images(roots, cfg.recursive,
                         on_error=lambda path, reason: _note_invalid(ctx, invalid, path, reason))
    ctx.log(f"scanning {len(images)} image files in {len(roots)} folder(s)")
    readable: list[tuple[DatasetImage, ImageInfo, str]] = []
    broken: list[dict] = []
    masks, mask_sources, mask_problems = MaskFinder(cfg.conditioning_data_dir, cfg.alpha_mask), {}, []
    complete = True
    try:
        for i, image in enumerate(images):
            ctx.check_stop()
            if i % PROGRESS_EVERY == 0:
                ctx.progress(i, len(images))
            try:
                info = probe_image(image.path, cfg.max_image_pixels, cfg.verify_pixels)
            except ImageError as exc:
                broken.append({"path": str(image.path), "reason": exc.reason})
                ctx.warning(f"skipped unreadable image: {exc.reason}", image.path)
                continue
            if _unplannable(ctx, broken, image.path, info, cfg):
                continue
            readable.append((image, info, _caption_of(ctx, image, cfg.caption_extension)))
            if masks.active:
                _check_mask(ctx, masks, image.path, info, cfg.max_image_pixels, mask_sources, mask_problems)
        ctx.progress(len(images), len(images))
    except JobStopped:
        complete = False
        ctx.log(f"stopped after {len(readable) + len(broken)} of {len(images)} images; "
                "the report is partial")
    report = build_report(cfg, roots, images, readable, broken, invalid, complete, mask_sources, mask_problems)
    atomic_write_json(ctx.run.scan_report_file, report)
    summary = summarize(report)
    _log_summary(ctx, summary)
    return summary


def build_report(cfg: ScanConfig, roots: list[Path], images: list[DatasetImage],
                 readable: list[tuple[DatasetImage, ImageInfo, str]], broken: list[dict],
                 invalid: list[dict], complete: bool, mask_sources: dict[Path, MaskSource] | None = None,
                 mask_problems: list[dict] | None = None) -> dict:
    """The report.json document (its shape is what the Dataset tab reads); the mask entries only when a
    mask source is set."""
    sizes = Counter(size_bin(info.width, info.height) for _, info, _ in readable)
    aspects = Counter(aspect_bin(info.width, info.height) for _, info, _ in readable)
    report = {
        "complete": complete,
        "folders": [str(root) for root in roots],
        "caption_extension": cfg.caption_extension,
        "total_files": len(images),
        "readable": len(readable),
        "effective_images": sum(image.repeats for image, _, _ in readable),
        "by_format": dict(sorted(Counter(info.format for _, info, _ in readable).items())),
        "size_histogram": [{"label": label, "count": sizes[label]} for _, label in SIZE_BINS],
        "aspect_histogram": [{"label": label, "count": aspects[label]}
                             for _, label in ASPECT_RATIOS],
        "broken": broken,
        "missing_captions": [str(image.path) for image, _, c in readable if c == "missing"],
        "empty_captions": [str(image.path) for image, _, c in readable if c == "empty"],
        "repeat_folders": _repeat_folders(images, readable),
        "invalid_folders": invalid + _invalid_repeat_folders(images),
        "images": [_image_entry(image, info, caption, cfg.caption_extension)
                   for image, info, caption in readable],
    }
    if cfg.conditioning_data_dir.strip() or cfg.alpha_mask:
        report["masks"] = {"folder": cfg.conditioning_data_dir.strip(), "alpha": cfg.alpha_mask}
        report["mask_problems"] = mask_problems or []
        for (image, _, _), entry in zip(readable, report["images"]):
            entry["mask"] = _mask_entry((mask_sources or {}).get(image.path))
    return report


def summarize(report: dict) -> dict:
    """The job's small result: counts only (of mask problems when masks were checked)."""
    summary = {"complete": report["complete"], "total_files": report["total_files"],
               "readable": report["readable"], "broken": len(report["broken"]),
               "missing_captions": len(report["missing_captions"]),
               "empty_captions": len(report["empty_captions"]),
               "effective_images": report["effective_images"]}
    if "mask_problems" in report:
        summary["mask_problems"] = len(report["mask_problems"])
    return summary


def _caption_of(ctx: JobContext, image: DatasetImage, extension: str) -> str:
    path = image.caption_path(extension)
    caption = read_caption_detailed(path)
    if caption.problem:
        ctx.skipped(path, caption.problem)
    return caption_status(caption)


def _check_mask(ctx: JobContext, masks: MaskFinder, path: Path, info: ImageInfo, max_pixels: int,
                sources: dict[Path, MaskSource], problems: list[dict]) -> None:
    """Find and check one image's mask: its source goes to `sources`, what is wrong with it to `problems`."""
    try:
        source = masks.find(path)
    except ImageError as err:
        problem = err.reason
    else:
        sources[path] = source
        problem = mask_problem(path, source, (info.width, info.height), max_pixels)
    if problem:
        problems.append({"path": str(path), "reason": problem})
        ctx.warning(problem, path)


def _mask_entry(source: MaskSource | None) -> str | None:
    return None if source is None else source.as_report()


def _unplannable(ctx: JobContext, broken: list[dict], path: Path, info: ImageInfo, cfg: ScanConfig) -> bool:
    """True when the bucket plan would skip the image for its size (reported as the plan reports it)."""
    problem = size_problem((info.width, info.height), cfg)
    if problem:
        broken.append({"path": str(path), "reason": problem})
        ctx.skipped(path, problem)
    return problem is not None


def _note_invalid(ctx: JobContext, invalid: list[dict], path: Path, reason: str) -> None:
    invalid.append({"path": str(path), "reason": reason})
    ctx.warning(reason, path)


def _repeat_folders(images: list[DatasetImage],
                    readable: list[tuple[DatasetImage, ImageInfo, str]]) -> list[dict]:
    counts = Counter(image.concept_dir for image, _, _ in readable)
    folders: dict[Path, dict] = {}
    for image in images:
        if image.concept_dir not in folders:
            n = counts[image.concept_dir]
            folders[image.concept_dir] = {
                "path": str(image.concept_dir), "name": image.concept_name,
                "repeats": image.repeats, "images": n, "effective": n * image.repeats}
    return list(folders.values())


def _invalid_repeat_folders(images: list[DatasetImage]) -> list[dict]:
    problems = {image.concept_dir: image.problem for image in images if image.problem}
    return [{"path": str(path), "reason": reason} for path, reason in problems.items()]


def _image_entry(image: DatasetImage, info: ImageInfo, caption: str, extension: str) -> dict:
    return {"path": str(image.path), "caption_path": str(image.caption_path(extension)),
            "width": info.width, "height": info.height, "format": info.format,
            "repeats": image.repeats, "caption": caption}


def _log_summary(ctx: JobContext, s: dict) -> None:
    state = "complete" if s["complete"] else "PARTIAL (stopped)"
    ctx.log(f"scan {state}: {s['total_files']} image files, {s['readable']} readable, "
            f"{s['broken']} broken")
    ctx.log(f"captions: {s['missing_captions']} missing, {s['empty_captions']} empty")
    if s.get("mask_problems"):
        ctx.log(f"masks: {s['mask_problems']} missing, unreadable, of the wrong size or empty")
    ctx.log(f"effective images (with repeats): {s['effective_images']}")
