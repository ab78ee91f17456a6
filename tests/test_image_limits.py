"""Image size limits after planning: an upscale bomb (a file of a few hundred bytes whose bucket plan
enlarges it to gigapixels) and a strip far thinner than any bucket are skipped by the bucket plan,
once and with a reason, before anything is decoded or resized; the scan, the latent cache, the
trainer's data and its validation images skip them by the same rule."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
from PIL import Image

from core.config import BucketConfig, CacheConfig, ScanConfig, TrainConfig
from core.dataset import buckets, scan
from core.dataset.buckets import BucketAssignment, assign_bucket, make_buckets, plan_buckets
from core.dataset.images import ImageError
from core.dataset.latents import run as run_cache
from core.jobs.protocol import JobContext
from core.train.data import Example, build_examples, readable_examples

# 40000x2 is a 322-byte PNG; at 512,512 kohya's rule plans it to fill the 1024x256 bucket's height:
# 5,120,000x256 (1.3 Gpx, over 5 GB as a PIL image). 10000x8 is planned to 320,000x256 (82 Mpx).
WIDE, STRIP = (40000, 2), (10000, 8)
NUM_IMAGES = 8
# What the tests' small bucket settings (as test_latents) plan for WIDE: the 256x64 bucket's height,
# 1,280,000x64 (82 Mpx, 328 MB as a PIL image): big enough to see, small enough to survive a failure.
SMALL = dict(max_resolution="128,128", min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=64)


def add_bombs(folder: Path) -> dict[str, tuple[int, int]]:
    sizes = {"wide.png": WIDE, "strip.png": STRIP}
    for name, size in sizes.items():
        Image.new("RGB", size, (200, 30, 30)).save(folder / name)
    return sizes


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (a sanity bound only: it never goes down)."""
    resource = pytest.importorskip("resource")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def skipped_warnings(ctx) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for event in ctx.run.read_events("warning"):
        found.setdefault(Path(event.get("path", "")).name, []).append(event["message"])
    return found


def test_the_bombs_are_tiny_files(tmp_path):
    add_bombs(tmp_path)
    assert (tmp_path / "wide.png").stat().st_size < 1000 and (tmp_path / "strip.png").stat().st_size < 1000


def test_bucket_plan_skips_upscale_bombs_once_with_a_reason(small_dataset, ctx):
    add_bombs(small_dataset / "3_cats")
    assignments, skipped = plan_buckets(BucketConfig(train_data_dir=[str(small_dataset)]), ctx)
    assert sorted(a.path.name for a in assignments) == sorted(f"img{i}.png" for i in range(12))
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert set(reasons) == {"wide.png", "strip.png"}
    wide, strip = reasons["wide.png"], reasons["strip.png"]
    # the sizes: the image, its bucket, the resize it would need, the limit; and what to do
    assert "40000x2" in wide and "1024x256" in wide and "5,120,000x256" in wide and "16:1" in wide
    assert "10000x8" in strip and "320,000x256" in strip
    assert all("crop" in r and "remove" in r for r in reasons.values())
    warned = skipped_warnings(ctx)
    assert len(warned["wide.png"]) == len(warned["strip.png"]) == 1
    assert warned["wide.png"] == [f"skipped: {wide}"]


def test_planned_resize_over_max_image_pixels_is_refused():
    # Only the 1024x1024 bucket: 800x300 (2.67:1, within the aspect limit) fills its height at
    # scale 1024/300: 2731x1024 = 2,796,544 pixels.
    square = dict(train_data_dir=["x"], max_resolution="1024,1024", min_bucket_reso=1024, max_bucket_reso=1024)
    problem = buckets.size_problem((800, 300), BucketConfig(**square, max_image_pixels=1_000_000))
    assert "2731x1024" in problem and "2,796,544" in problem and "max_image_pixels (1,000,000)" in problem
    assert buckets.size_problem((800, 300), BucketConfig(**square)) is None
    # no_upscale never enlarges: its resize is at most the image, which passed the limit already
    no_upscale = BucketConfig(**square, max_image_pixels=1_000_000, bucket_no_upscale=True)
    assert buckets.size_problem((800, 300), no_upscale) is None


def test_aspect_limit_is_four_times_the_widest_bucket_and_kohya_within_it():
    cfg = BucketConfig(train_data_dir=["x"])  # 512,512 / 256..1024 / 64: widest 1024x256 (4:1)
    predefined = make_buckets((512, 512), 256, 1024, 64)
    for size in [(4096, 256), (256, 4096), (1600, 100), (16000, 1000)]:  # 16:1 exactly: kept
        assert buckets.size_problem(size, cfg) is None
    assert assign_bucket((4096, 256), predefined, (512, 512), 64, False) == (
        (1024, 256), (4096, 256), (1536, 0, 2560, 256))
    for size in [(4160, 256), (256, 4160), (1700, 100)]:
        problem = buckets.size_problem(size, cfg)
        assert problem and f"{size[0]}x{size[1]}" in problem and ("16:1" if size[0] > size[1] else "1:16") in problem
    assert "too tall" in buckets.size_problem((256, 4160), cfg)
    # no_upscale shrinks a strip below the step instead: refused as before, by assign_bucket
    problem = buckets.size_problem(WIDE, BucketConfig(train_data_dir=["x"], bucket_no_upscale=True))
    assert "bucket_reso_steps" in problem


def test_a_plan_made_without_the_limits_is_refused_before_decoding(tmp_path, monkeypatch):
    """An older buckets.json (or any hand-made plan) still holding a bomb: the loaders refuse it before
    decoding, and crop_to_bucket before resizing."""
    add_bombs(tmp_path)
    bucket, resized, crop = assign_bucket(WIDE, make_buckets((128, 128), 64, 256, 64), (128, 128), 64, False)
    assert resized == (1_280_000, 64)  # kohya's plan, unchecked
    plan = BucketAssignment(tmp_path / "wide.png", WIDE, bucket, resized, crop, 1)
    with pytest.raises(ImageError, match="1,280,000x64") as raised:
        buckets.training_image(plan)
    assert raised.value.path == plan.path
    with pytest.raises(ImageError, match="1,280,000x64"):
        buckets.crop_to_bucket(Image.new("RGB", WIDE), plan)
    decoded = []
    monkeypatch.setattr(buckets, "open_image", lambda *a: decoded.append(a))
    with pytest.raises(ImageError):
        buckets.training_image(plan)
    assert decoded == []


def test_scan_reports_the_bombs_with_the_bucket_plans_reason(small_dataset, ctx):
    add_bombs(small_dataset / "3_cats")
    summary = scan.run(ScanConfig(train_data_dir=[str(small_dataset)]), ctx)
    assert (summary["readable"], summary["broken"]) == (12, 2)
    report = json.loads(ctx.run.scan_report_file.read_text())
    scanned = {Path(b["path"]).name: b["reason"] for b in report["broken"]}
    _, skipped = plan_buckets(BucketConfig(train_data_dir=[str(small_dataset)]))
    assert scanned == {Path(s["path"]).name: s["reason"] for s in skipped}


@pytest.fixture(scope="module")
def demo(demo_kit):
    return demo_kit("sd1", NUM_IMAGES, 4)


def test_cache_job_skips_the_bombs_and_stays_small(demo, copy_dataset, tmp_path):
    dataset = copy_dataset(demo)
    values = dict(train_data_dir=[str(dataset)], pretrained_model_name_or_path=str(demo / "model.safetensors"),
                  vae_batch_size=3, max_data_loader_n_workers=2, **SMALL)
    with JobContext(tmp_path / "warm", echo=False) as ctx:  # imports and first-use allocations
        warm = run_cache(CacheConfig(**values, latents_dir=str(tmp_path / "warm-cache")), ctx)
    assert warm["encoded"] == NUM_IMAGES
    add_bombs(next(p for p in dataset.iterdir() if p.is_dir()))
    before = peak_rss_mb()
    with JobContext(tmp_path / "run", echo=False) as ctx:
        result = run_cache(CacheConfig(**values, latents_dir=str(tmp_path / "cache")), ctx)
        warned = skipped_warnings(ctx)
    grown = peak_rss_mb() - before
    assert result["complete"] and (result["encoded"], result["failed"]) == (NUM_IMAGES, 2)
    assert len(warned["wide.png"]) == len(warned["strip.png"]) == 1
    assert "1,280,000x64" in warned["wide.png"][0]
    assert len(os.listdir(tmp_path / "cache")) == NUM_IMAGES
    # WIDE alone would take 328 MB more (its planned resize); the job on 128px images needs little
    assert grown < 150, f"the peak resident memory grew by {grown:.0f} MB"


def test_training_data_skips_the_bombs(demo, copy_dataset, tmp_path, ctx):
    dataset = copy_dataset(demo)
    add_bombs(next(p for p in dataset.iterdir() if p.is_dir()))
    cfg = TrainConfig(train_data_dir=[str(dataset)], pretrained_model_name_or_path=str(demo / "model"),
                      output_dir=str(tmp_path / "out"), cache_latents=False, max_data_loader_n_workers=0,
                      **SMALL)
    examples = build_examples(cfg, ctx)
    assert len(examples) == NUM_IMAGES and not {"wide.png", "strip.png"} & {e.image.name for e in examples}
    warned = skipped_warnings(ctx)
    assert len(warned["wide.png"]) == len(warned["strip.png"]) == 1


def test_validation_images_are_checked_by_the_same_rule(tmp_path, ctx):
    add_bombs(tmp_path)
    bucket, resized, crop = assign_bucket(STRIP, make_buckets((128, 128), 64, 256, 64), (128, 128), 64, False)
    plan = BucketAssignment(tmp_path / "strip.png", STRIP, bucket, resized, crop, 1)
    Image.new("RGB", (64, 64)).save(tmp_path / "fine.png")
    fine = BucketAssignment(tmp_path / "fine.png", (64, 64), (128, 128), (128, 128), (0, 0, 128, 128), 1)
    examples = [Example(a.path, a.bucket, "x", None, assignment=a) for a in (plan, fine)]
    assert readable_examples(examples, ctx, 178_956_970) == examples[1:]
    assert "80,000x64" in skipped_warnings(ctx)["strip.png"][0]


def test_an_image_that_runs_out_of_memory_is_skipped_with_a_reason(demo, copy_dataset, tmp_path, monkeypatch):
    from core.dataset import latents

    dataset = copy_dataset(demo)
    victim = sorted(dataset.rglob("*.png"))[0]
    real = latents.training_sample

    def short_of_memory(assignment, mask, max_pixels):
        if assignment.path == victim:
            raise MemoryError()  # no message, as Python's own
        return real(assignment, mask, max_pixels)

    monkeypatch.setattr(latents, "training_sample", short_of_memory)
    cfg = CacheConfig(train_data_dir=[str(dataset)], pretrained_model_name_or_path=str(demo / "model.safetensors"),
                      latents_dir=str(tmp_path / "cache"), max_data_loader_n_workers=0, **SMALL)
    with JobContext(tmp_path / "run", echo=False) as ctx:
        result = run_cache(cfg, ctx)
        warned = skipped_warnings(ctx)
    assert result["complete"] and (result["encoded"], result["failed"]) == (NUM_IMAGES - 1, 1)
    assert warned[victim.name][0].startswith("skipped: MemoryError: ") and "memory" in warned[victim.name][0][22:]
