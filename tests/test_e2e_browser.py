"""End to end in a real browser, as a user would go: build the demo kit, scan it, tag it with a tiny
WD14-layout model, clean the captions, plan buckets and cache latents, train a few steps from the CPU
demo preset with samples, and find a checkpoint that loads back. A screenshot of each tab is saved
(in $E2E_SCREENSHOTS when set, else in the test's tmp folder) for review."""
import os
import re
from pathlib import Path

import torch
from test_gui_browser import fill, gui_url, page, show_field, textarea_value, wait_log  # noqa: F401  (fixtures)

from core.config import BucketConfig, TrainConfig

STEPS = 24
TIMEOUT = 180_000  # ms: each job of the pipeline on a busy 2-core CPU


def test_every_tab_from_demo_kit_to_a_trained_checkpoint(page, tmp_path):  # noqa: F811  (the fixture)
    from core.models.sd import load_sd_model
    from test_tagger_wd14 import build_model

    shots = Path(os.environ.get("E2E_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    def screenshot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    kit = tmp_path / "my kit é"
    page.click("text=No dataset or model yet? Build the demo kit")
    fill(page, "DemoConfig-out", str(kit))
    fill(page, "DemoConfig-num_images", "8")
    page.click("#demo-button")
    wait_log(page, "demo", "demo: done", TIMEOUT)
    dataset = kit / "dataset"
    images = sorted(p for p in dataset.rglob("*") if p.suffix in (".png", ".jpg", ".webp"))
    assert len(images) == 8
    for caption in dataset.rglob("*.txt"):  # a user's own, uncaptioned images
        caption.unlink()

    fill(page, "ScanConfig-train_data_dir", str(dataset))
    page.click("#scan-button")
    wait_log(page, "scan", "scan: done", TIMEOUT)
    page.wait_for_selector("#scan-report:has-text('8 image files, 8 readable')")
    screenshot("1-dataset")

    page.click("#tab-captioning-button")
    fill(page, "TagConfig-train_data_dir", str(dataset))
    fill(page, "TagConfig-model_dir", str(build_model(tmp_path / "tagger")))
    fill(page, "TagConfig-general_threshold", "0")
    page.click("#tag-button")
    wait_log(page, "tag", "tag: done", TIMEOUT)
    page.wait_for_selector("#tag-summary:has-text('written 8')")
    assert all(image.with_suffix(".txt").read_text(encoding="utf-8") for image in images)
    screenshot("2-captioning")

    page.click("#tab-cleaning-button")
    fill(page, "CleanConfig-train_data_dir", str(dataset))
    fill(page, "CleanConfig-rules", "underscores\ndedupe\nprefix: shapetoken")
    page.click("#clean-button")
    wait_log(page, "clean", "clean: done", TIMEOUT)
    captions = [image.with_suffix(".txt").read_text(encoding="utf-8") for image in images]
    assert all(c.startswith("shapetoken, ") and not re.search(r"[a-z]_[a-z]", c) for c in captions)
    screenshot("3-cleaning")

    page.click("#tab-buckets-button")
    fill(page, "BucketConfig-train_data_dir", str(dataset))
    fill(page, "BucketConfig-max_resolution", "128,128")  # as the CPU demo preset trains
    show_field(page, BucketConfig, "min_bucket_reso")
    fill(page, "BucketConfig-min_bucket_reso", "64")
    fill(page, "BucketConfig-max_bucket_reso", "256")
    page.click("#bucket-button")
    wait_log(page, "bucket", "bucket: done", TIMEOUT)
    page.wait_for_selector("#bucket-summary:has-text('8 images in')")
    fill(page, "CacheConfig-pretrained_model_name_or_path", str(kit / "model"))
    page.click("#cache-button")
    wait_log(page, "cache", "cache: done", TIMEOUT)
    assert len(list(dataset.rglob("*.latents.safetensors"))) == 8
    screenshot("4-buckets")

    page.click("#tab-training-button")
    page.click("#train-preset input")
    page.click("ul[role='listbox'] li:has-text('CPU demo')")
    page.wait_for_selector("#train-changes:has-text('Same as preset')")
    for name, value in (("pretrained_model_name_or_path", kit / "model"), ("train_data_dir", dataset),
                        ("output_dir", tmp_path / "out")):
        show_field(page, TrainConfig, name)  # settings outside the first screen sit in sub-tabs by section
        fill(page, f"TrainConfig-{name}", str(value))
    fill(page, "TrainConfig-max_train_steps", str(STEPS))
    page.wait_for_selector("#train-changes:has-text('4 setting(s) differ')")
    page.click("#train-check")
    page.wait_for_selector("#train-report:has-text('The run will start with')")
    assert "stale" not in page.inner_text("#train-report").lower()  # the Buckets tab's cache is current
    page.click("#train-button")
    page.wait_for_selector("#train-status:has-text('done')", timeout=300_000)
    page.wait_for_selector("#train-samples img")
    page.wait_for_selector("#train-checkpoint:has-text('Latest checkpoint')")
    log = textarea_value(page, "#train-log")
    assert f"training {STEPS} steps" in log
    screenshot("5-training")

    checkpoint = tmp_path / "out" / "demo-finetune.safetensors"
    assert checkpoint.as_posix() in page.inner_text("#train-checkpoint") or checkpoint.name in page.inner_text(
        "#train-checkpoint")
    trained, base = load_sd_model(str(checkpoint)), load_sd_model(str(kit / "model"))
    assert trained.arch == "sd1"
    changed = [k for k, v in base.unet.state_dict().items() if not torch.equal(v, trained.unet.state_dict()[k])]
    assert changed

    page.click("#tab-runs-button")
    page.click("#runs-refresh")
    jobs = ["demo", "scan", "tag", "clean", "bucket", "cache", "train"]
    page.wait_for_function(f"{jobs}.every(job => document.querySelector('#runs-table').innerText.includes(job))")
    screenshot("6-runs")
    assert len(list(shots.glob("*.png"))) == 6
