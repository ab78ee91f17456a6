"""Masked loss (sd-scripts' masked_loss, alpha_mask, conditioning_data_dir): loss values against a hand-computed
reference, zero gradient where the mask is zero, the mask cropped and flipped as its image, the latent cache
keeping the mask, the scan's reports, the start checks, bad mask files, and training runs on the demo model."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from trainkit import events, prompt_encoder, train, train_values

from core.config import CacheConfig, ScanConfig, TrainConfig, validate
from core.dataset import scan
from core.dataset.buckets import BucketAssignment, plan_buckets
from core.dataset.images import is_image_file, open_image
from core.dataset.latents import cache_path_for, is_cache_valid, load_cached, recipe
from core.dataset.latents import run as run_cache
from core.dataset.masks import MaskFinder, MaskSource, mask_overlay, mask_to_size, training_sample
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder
from core.train import step
from core.train.data import TrainDataset, build_examples, collate
from core.train.loss import apply_masked_loss, elementwise_loss, reduce_loss
from core.train.start_checks import mask_problems


def pixel_mask(blocks) -> torch.Tensor:
    """A [1, 1, 4, 4] mask from four 2x2 blocks [[top-left, top-right], [bottom-left, bottom-right]], each a
    2x2 list of values."""
    rows = [torch.cat([torch.tensor(b, dtype=torch.float32) for b in row], dim=1) for row in blocks]
    return torch.cat(rows, dim=0)[None, None]


ONES, ZEROS, HALF = [[1, 1], [1, 1]], [[0, 0], [0, 0]], [[0.5, 0.5], [0.5, 0.5]]


@pytest.mark.parametrize("loss_type, weights, expected", [
    # l2, sample 0: squared errors c0 [[1, 4], [9, 16]], c1 [[0, 0], [4, 4]]; latent mask [[1, 0], [1, 0]]
    #   -> (1 + 9 + 0 + 4) / 8 elements = 1.75
    # sample 1: squared errors c0 all 4, c1 all 1; latent mask [[0, 0.5], [0.5, 1]] (area means of the blocks)
    #   -> (4 * 2 + 1 * 2) / 8 = 1.25
    ("l2", None, (1.75 + 1.25) / 2),
    ("l2", [1.0, 2.0], (1.75 * 1 + 1.25 * 2) / 2),
    # l1, sample 0: (1 + 3 + 0 + 2) / 8 = 0.75; sample 1: (2 * 2 + 1 * 2) / 8 = 0.75
    ("l1", None, 0.75),
])
def test_loss_values_equal_a_hand_computed_reference(loss_type, weights, expected):
    target = torch.tensor([[[[1., 2.], [3., 4.]], [[0., 0.], [2., 2.]]],
                           [[[2., 2.], [2., 2.]], [[1., 1.], [1., 1.]]]])
    prediction = torch.zeros_like(target)
    masks = torch.cat([pixel_mask([[ONES, ZEROS], [ONES, ZEROS]]),
                       pixel_mask([[ZEROS, [[1, 1], [0, 0]]], [HALF, ONES]])])
    assert mask_to_size(masks, (2, 2)).flatten().tolist() == [1, 0, 1, 0, 0, 0.5, 0.5, 1]
    loss = apply_masked_loss(elementwise_loss(prediction, target, loss_type), masks)
    result = reduce_loss(loss, None if weights is None else torch.tensor(weights))
    assert result.item() == pytest.approx(expected, abs=1e-7)


def test_an_all_ones_mask_changes_nothing_and_grey_weighs_by_its_value():
    target = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    prediction = torch.zeros_like(target)
    plain = reduce_loss(elementwise_loss(prediction, target, "l2"))
    loss = elementwise_loss(prediction, target, "l2")
    assert torch.equal(reduce_loss(apply_masked_loss(loss, torch.ones(2, 1, 64, 64))), plain)
    grey = torch.full((2, 1, 64, 64), 127 / 255)
    assert reduce_loss(apply_masked_loss(loss, grey)).item() == pytest.approx(plain.item() * 127 / 255, rel=1e-6)


def half_transparent_png(path, size=(128, 128)):
    """An RGBA image whose left half is transparent (alpha 0) and right half opaque."""
    width, height = size
    rgba = np.random.default_rng(1).integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[:, : width // 2, 3] = 0
    rgba[:, width // 2:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def assignment_of(path, bucket, resized=None):
    """The plan of one image (a centre crop of `resized` to `bucket`)."""
    with Image.open(path) as im:
        original = im.size
    resized = resized or bucket
    left, top = (resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2
    return BucketAssignment(path, original, bucket, resized, (left, top, left + bucket[0], top + bucket[1]), 1)


def test_gradient_is_zero_where_the_alpha_mask_is_zero(tmp_path):
    path = half_transparent_png(tmp_path / "half.png")
    image, mask = training_sample(assignment_of(path, (128, 128)), MaskSource(path, alpha=True))
    assert image.mode == "RGB" and mask.shape == (1, 128, 128)
    assert mask[..., :64].max() == 0 and mask[..., 64:].min() == 1
    prediction = torch.zeros(1, 4, 16, 16, requires_grad=True)
    target = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    reduce_loss(apply_masked_loss(elementwise_loss(prediction, target, "l2"), mask[None])).backward()
    assert prediction.grad[..., :8].abs().max() == 0
    assert (prediction.grad[..., 8:] != 0).all()


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


@pytest.fixture(scope="module")
def sd1_model(kit):
    from core.models.sd import load_sd_model

    return load_sd_model(str(kit / "model"))


def test_the_training_step_weights_the_unet_output_by_the_mask(sd1_model, kit):
    """Through loss_of_batch: the U-Net's prediction gets no gradient where the mask is zero, an all-zero mask
    gives a zero loss and an all-ones mask the unmasked loss."""
    cfg = validate(TrainConfig, train_values(kit, kit / "unused", masked_loss=True, alpha_mask=True), "test")
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    half = torch.ones(2, 1, 128, 128)
    half[..., :64] = 0
    outputs = []
    handle = sd1_model.unet.register_forward_hook(lambda module, args, out: outputs.append(out.sample))

    def loss(masks=None):
        batch = {"latents": latents, "captions": ["a red circle", "a blue square"]}
        if masks is not None:
            batch["masks"] = masks
        torch.manual_seed(0)
        return step.loss_of_batch(batch, sd1_model, sd1_model.unet, prompt_encoder(sd1_model, cfg), cfg,
                                  torch.float32, torch.device("cpu"))

    try:
        value = loss(half)
        outputs[-1].retain_grad()
        value.backward()
        grad = outputs[-1].grad
        assert grad[..., :8].abs().max() == 0 and (grad[..., 8:] != 0).any()
        with torch.no_grad():
            assert loss(torch.zeros(2, 1, 128, 128)).item() == 0
            assert loss(torch.ones(2, 1, 128, 128)).item() == pytest.approx(loss().item(), rel=1e-6)
    finally:
        handle.remove()
        sd1_model.unet.zero_grad(set_to_none=True)


def grey_pattern(size, seed=0) -> np.ndarray:
    """Smooth-ish grey values (so resampling gives values strictly between 0 and 255)."""
    width, height = size
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width), dtype=np.uint8)


@pytest.mark.parametrize("bucket, resized", [((128, 128), (128, 128)), ((128, 64), (192, 115)),
                                             ((64, 128), (64, 96))])
def test_the_mask_is_resized_and_cropped_exactly_as_its_image(tmp_path, bucket, resized):
    """A grey image (R = G = B) with a mask file of the same values: after the bucket's resize and crop the
    image's red channel and the mask are the same, whether the image is enlarged, shrunk or cropped."""
    pattern = grey_pattern((160, 96))
    Image.fromarray(np.stack([pattern] * 3, axis=-1)).save(tmp_path / "img.png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(pattern).save(tmp_path / "masks" / "img.bmp")
    source = MaskFinder(str(tmp_path / "masks")).find(tmp_path / "img.png")
    assert source == MaskSource(tmp_path / "masks" / "img.bmp")
    image, mask = training_sample(assignment_of(tmp_path / "img.png", bucket, resized), source)
    assert image.size == bucket and mask.shape == (1, bucket[1], bucket[0])
    assert np.array_equal(np.asarray(image)[..., 0], (mask[0] * 255).round().numpy().astype(np.uint8))


def dataset_images(data) -> list:
    return sorted(p for p in data.rglob("*") if is_image_file(p))


def masked_dataset(tmp_path, kit, half=True, value=127):
    """The demo dataset with a mask folder: each mask black on its left half (or `value` all over)."""
    data = shutil.copytree(kit / "dataset", tmp_path / "dataset", ignore=shutil.ignore_patterns("*.latents.*"))
    masks = tmp_path / "masks"
    masks.mkdir()
    for image in dataset_images(data):
        with Image.open(image) as im:
            width, height = im.size
        mask = np.full((height, width), 255 if half else value, dtype=np.uint8)
        if half:
            mask[:, : width // 2] = 0
        Image.fromarray(mask).save(masks / f"{image.stem}.png")
    return data, masks


def item_values(kit, data, masks, tmp_path, **overrides) -> TrainConfig:
    return validate(TrainConfig, train_values(kit, tmp_path / "out", train_data_dir=[str(data)], masked_loss=True,
                                              conditioning_data_dir=str(masks), latents_dir=str(tmp_path / "cache"),
                                              **overrides), "test")


@pytest.mark.parametrize("cache_latents", [False, True])
def test_items_carry_the_mask_flipped_with_the_sample(kit, tmp_path, cache_latents):
    data, masks = masked_dataset(tmp_path, kit)
    cfg = item_values(kit, data, masks, tmp_path, cache_latents=cache_latents, flip_aug=True, flip_p=1.0)
    with JobContext(tmp_path / "run", echo=False) as ctx:
        if cache_latents:
            run_cache(CacheConfig(**{k: getattr(cfg, k) for k in CacheConfig.model_fields}), ctx)
        examples = build_examples(cfg, ctx)
    assert examples and all(e.mask is not None and e.mask.path.parent == masks for e in examples)
    item = TrainDataset(examples, cfg)[0]
    example = examples[item["index"]]
    image, expected = training_sample(example.assignment, example.mask)
    if cache_latents:  # the mask at latent size, flipped as the flipped latents are
        expected = mask_to_size(expected[None], item["latents"].shape[-2:])[0]
    else:  # the mask at pixel size, flipped as the pixels are
        unflipped = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
        assert torch.allclose(item["pixels"], unflipped.flip(-1))
    assert torch.equal(item["mask"], expected.flip(-1))
    assert item["mask"][..., -2:].max() == 0 and item["mask"][..., :2].min() == 1  # black: the right side now
    batch = collate([TrainDataset(examples, cfg)[i] for i in range(2) if examples[i].bucket == examples[0].bucket])
    assert batch["masks"].ndim == 4 and batch["masks"].shape[1] == 1


def cache_cfg(kit, data, tmp_path, **overrides) -> CacheConfig:
    values = dict(train_data_dir=[str(data)], pretrained_model_name_or_path=str(kit / "model.safetensors"),
                  latents_dir=str(tmp_path / "cache"), max_resolution="128,128", min_bucket_reso=64,
                  max_bucket_reso=256, bucket_reso_steps=64, vae_batch_size=3, max_data_loader_n_workers=1)
    return CacheConfig(**{**values, **overrides})


def cache_run(cfg, run_dir) -> dict:
    with JobContext(run_dir, echo=False) as ctx:
        return run_cache(cfg, ctx)


def test_the_cache_keeps_the_mask_and_a_cache_without_masks_is_stale(kit, tmp_path):
    data, masks = masked_dataset(tmp_path, kit, half=False)
    plain = cache_cfg(kit, data, tmp_path)
    masked = cache_cfg(kit, data, tmp_path, masked_loss=True, conditioning_data_dir=str(masks), flip_aug=True)
    first = cache_run(plain, tmp_path / "r1")
    assert first["encoded"] == first["images"] > 0
    again = cache_run(masked, tmp_path / "r2")  # made without masks (nor flipped latents): all rebuilt
    assert again["encoded"] == first["images"] and again["failed"] == 0
    assignments, _ = plan_buckets(masked)
    for a in assignments:
        cached = load_cached(cache_path_for(a.path, masked))
        source = MaskSource(masks / f"{a.path.stem}.png")
        assert cached["meta"]["mask"]["source"] == "file" and cached["meta"]["mask"]["path"] == str(source.path)
        _, pixel_mask_of_image = training_sample(a, source)
        expected = mask_to_size(pixel_mask_of_image[None], cached["latents"].shape[-2:])[0]
        assert torch.equal(cached["mask"], expected)
        assert cached["mask"].shape == (1, a.bucket[1] // 8, a.bucket[0] // 8)
        assert torch.allclose(cached["mask"], torch.full_like(cached["mask"], 127 / 255))
    assert cache_run(masked, tmp_path / "r3")["skipped"] == first["images"]  # valid now
    assert cache_run(plain.model_copy(update={"flip_aug": True}), tmp_path / "r4")["skipped"] == first["images"]
    changed = masks / f"{assignments[0].path.stem}.png"
    Image.new("L", Image.open(changed).size, 255).save(changed)  # a new mask: that image only is rebuilt
    result = cache_run(masked, tmp_path / "r5")
    assert result["encoded"] == 1 and result["skipped"] == first["images"] - 1
    new_mask = load_cached(cache_path_for(assignments[0].path, masked))["mask"]
    assert torch.equal(new_mask, torch.ones_like(new_mask))


def test_a_cache_file_without_its_mask_is_not_valid(kit, tmp_path):
    data, masks = masked_dataset(tmp_path, kit)
    cfg = cache_cfg(kit, data, tmp_path)
    cache_run(cfg, tmp_path / "r1")
    a = plan_buckets(cfg)[0][0]
    meta = load_cached(cache_path_for(a.path, cfg))["meta"]
    stat = os.stat(a.path)
    source = MaskSource(masks / f"{a.path.stem}.png")
    assert is_cache_valid(cache_path_for(a.path, cfg), recipe(a, stat, meta["vae"], torch.float32), False)
    assert not is_cache_valid(cache_path_for(a.path, cfg), recipe(a, stat, meta["vae"], torch.float32, source), False)


def warnings_of(run_dir) -> list[str]:
    return [f"{e.get('path')}: {e['message']}" for e in RunFolder(run_dir).read_events() if e["event"] == "warning"]


def test_a_bad_or_missing_mask_is_reported_by_name_and_its_image_skipped(kit, tmp_path):
    data, masks = masked_dataset(tmp_path, kit)
    images = dataset_images(data)
    (masks / f"{images[0].stem}.png").write_text("not an image")
    (masks / f"{images[1].stem}.png").unlink()
    Image.new("L", (10, 10), 255).save(masks / f"{images[2].stem}.png")
    cfg = cache_cfg(kit, data, tmp_path, masked_loss=True, conditioning_data_dir=str(masks))
    result = cache_run(cfg, tmp_path / "run")
    assert result["failed"] == 3 and result["encoded"] == len(images) - 3
    text = "\n".join(warnings_of(tmp_path / "run"))
    assert f"its mask {masks / (images[0].stem + '.png')}: not an image" in text
    assert f"no mask for it in the mask folder (conditioning_data_dir) {masks}" in text
    assert f"its mask {masks / (images[2].stem + '.png')} is 10x10 but the image is" in text
    values = item_values(kit, data, masks, tmp_path, cache_latents=False)
    with JobContext(tmp_path / "run2", echo=False) as ctx:
        examples = build_examples(values, ctx)
        dataset = TrainDataset(examples, values)
        items = [dataset[i] for i in range(len(examples))]  # the bad mask file is replaced, not fatal
    assert len(examples) == len(images) - 1  # the missing mask is found when planning
    skipped = {path for item in items for path, _ in item["skipped"]}
    assert skipped == {str(images[0]), str(images[2])}


def test_scan_reports_missing_wrong_size_empty_and_unreadable_masks(tmp_path):
    data, masks = tmp_path / "data", tmp_path / "masks"
    data.mkdir()
    masks.mkdir()
    for name in ("good", "missing", "small", "black", "broken"):
        Image.new("RGB", (64, 48), (10, 20, 30)).save(data / f"{name}.png")
    Image.new("L", (64, 48), 200).save(masks / "good.jpg")
    Image.new("L", (32, 24), 255).save(masks / "small.png")
    Image.new("RGB", (64, 48), (0, 0, 0)).save(masks / "black.png")
    (masks / "broken.png").write_bytes(b"\x89PNG not really")
    with JobContext(tmp_path / "run", echo=False) as ctx:
        summary = scan.run(ScanConfig(train_data_dir=[str(data)], conditioning_data_dir=str(masks)), ctx)
    assert summary["mask_problems"] == 4 and summary["readable"] == 5
    report = json.loads(RunFolder(tmp_path / "run").scan_report_file.read_text())
    reasons = {p["path"].rsplit("/", 1)[-1]: p["reason"] for p in report["mask_problems"]}
    assert set(reasons) == {"missing.png", "small.png", "black.png", "broken.png"}
    assert "no mask for it" in reasons["missing.png"]
    assert "is 32x24 but the image is 64x48" in reasons["small.png"]
    assert "all black" in reasons["black.png"] and str(masks / "black.png") in reasons["black.png"]
    assert str(masks / "broken.png") in reasons["broken.png"]
    entries = {e["path"].rsplit("/", 1)[-1]: e["mask"] for e in report["images"]}
    assert entries["good.png"] == str(masks / "good.jpg") and entries["missing.png"] is None


def test_scan_with_alpha_mask_reports_fully_transparent_images(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    half_transparent_png(data / "half.png", (64, 64))
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(data / "clear.png")
    Image.new("RGB", (64, 64), (255, 0, 0)).save(data / "opaque.png")
    with JobContext(tmp_path / "run", echo=False) as ctx:
        summary = scan.run(ScanConfig(train_data_dir=[str(data)], alpha_mask=True), ctx)
    report = json.loads(RunFolder(tmp_path / "run").scan_report_file.read_text())
    assert summary["mask_problems"] == 1
    assert report["mask_problems"][0]["path"].endswith("clear.png")
    assert "fully transparent" in report["mask_problems"][0]["reason"]
    assert {e["mask"] for e in report["images"]} == {"alpha"}


def test_scan_without_a_mask_source_reports_no_masks(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64)).save(data / "a.png")
    with JobContext(tmp_path / "run", echo=False) as ctx:
        summary = scan.run(ScanConfig(train_data_dir=[str(data)]), ctx)
    report = json.loads(RunFolder(tmp_path / "run").scan_report_file.read_text())
    assert "mask_problems" not in summary and "mask_problems" not in report and "mask" not in report["images"][0]


def test_overlay_tints_the_ignored_part(tmp_path):
    path = half_transparent_png(tmp_path / "half.png", (64, 32))
    overlay = np.asarray(mask_overlay(path, MaskSource(path, alpha=True), size=32))
    plain = open_image(path)
    plain.thumbnail((32, 32))
    assert overlay.shape == (16, 32, 3)
    assert np.array_equal(overlay[:, 18:], np.asarray(plain)[:, 18:])  # the kept part: the image itself
    # the ignored part (transparent: white in RGB) tinted: 0.6 x (255, 40, 40) + 0.4 x 255
    assert np.abs(overlay[:, :14].astype(int) - (255, 126, 126)).max() <= 1


@pytest.mark.parametrize("values, field", [
    ({"masked_loss": True}, "masked_loss"),
    ({"masked_loss": True, "alpha_mask": True, "conditioning_data_dir": "."}, "alpha_mask"),
    ({"masked_loss": True, "conditioning_data_dir": "/no/such/folder"}, "conditioning_data_dir"),
])
def test_start_checks_name_the_setting_to_fix(kit, tmp_path, values, field):
    cfg = validate(TrainConfig, train_values(kit, tmp_path, **values), "test")
    problems = mask_problems(cfg)
    assert [p.field for p in problems] == [field]
    assert not mask_problems(cfg.model_copy(update={"masked_loss": False}))


@pytest.mark.parametrize("cache_latents", [True, False])
def test_training_with_masked_loss_finishes(kit, tmp_path, cache_latents):
    data, masks = masked_dataset(tmp_path, kit)
    out = tmp_path / "out"
    result = train(train_values(kit, out, train_data_dir=[str(data)], masked_loss=True,
                                conditioning_data_dir=str(masks), cache_latents=cache_latents, flip_aug=True,
                                max_train_steps=3), tmp_path / "run")
    assert result["steps"] == 3 and (out / "model.safetensors").is_file()
    losses = [e["value"] for e in events(tmp_path / "run") if e["event"] == "metric" and e["name"] == "loss"]
    assert len(losses) == 3 and all(0 < v < float("inf") for v in losses)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"masked loss: {len(dataset_images(data))} images with masks from the mask folder {masks}" in log


def test_training_with_black_masks_has_zero_loss(kit, tmp_path):
    """Every mask black: nothing is trained, every step's loss is exactly 0 (the masks reach the loss)."""
    data, masks = masked_dataset(tmp_path, kit, half=False, value=0)
    result = train(train_values(kit, tmp_path / "out", train_data_dir=[str(data)], masked_loss=True,
                                conditioning_data_dir=str(masks), max_train_steps=2), tmp_path / "run")
    losses = [e["value"] for e in events(tmp_path / "run") if e["event"] == "metric" and e["name"] == "loss"]
    assert result["steps"] == 2 and losses == [0.0, 0.0]


def test_dataset_tab_lists_mask_problems_and_shows_the_mask_over_the_image(tmp_path):
    from tabs.dataset import mask_preview, problems_table, report_markdown

    data, masks = tmp_path / "data", tmp_path / "masks"
    data.mkdir()
    masks.mkdir()
    Image.new("RGB", (64, 64), (0, 255, 0)).save(data / "good.png")
    Image.new("RGB", (64, 64)).save(data / "missing.png")
    mask = np.full((64, 64), 255, dtype=np.uint8)
    mask[:, :32] = 0
    Image.fromarray(mask).save(masks / "good.png")
    with JobContext(tmp_path / "run", echo=False) as ctx:
        scan.run(ScanConfig(train_data_dir=[str(data)], conditioning_data_dir=str(masks)), ctx)
    report = json.loads(RunFolder(tmp_path / "run").scan_report_file.read_text())
    assert f"**Masks** (mask folder `{masks}`): 1 missing" in report_markdown(report)
    rows = problems_table(report).values.tolist()
    assert [str(data / "missing.png"), f"mask: {report['mask_problems'][0]['reason']}"] in rows
    assert report["mask_problems"][0]["reason"].startswith("no mask for it")
    entries = {e["path"]: e for e in report["images"]}
    shown, note = mask_preview(entries[str(data / "good.png")])
    assert shown.visible and str(masks / "good.png") in note
    overlay = np.asarray(shown.value if not isinstance(shown.value, dict) else Image.open(shown.value["path"]))
    assert overlay.shape[:2] == (64, 64)
    assert np.abs(overlay[:, :30].astype(int) - (153, 126, 24)).max() <= 1  # 0.6 x the tint + 0.4 x green
    assert (overlay[:, 34:] == (0, 255, 0)).all()  # kept: the image itself
    hidden, note = mask_preview(entries[str(data / "missing.png")])
    assert not hidden.visible and note == ""


def test_check_settings_counts_a_cache_without_masks_as_stale(kit, tmp_path):
    from core.train.preflight import count_stale_latents

    data, masks = masked_dataset(tmp_path, kit)
    plain = cache_cfg(kit, data, tmp_path)
    cache_run(plain, tmp_path / "r1")
    cfg = item_values(kit, data, masks, tmp_path)
    assignments, _ = plan_buckets(cfg)
    assert count_stale_latents(cfg.model_copy(update={"masked_loss": False}), assignments) == 0
    assert count_stale_latents(cfg, assignments) == len(assignments)
    cache_run(cache_cfg(kit, data, tmp_path, masked_loss=True, conditioning_data_dir=str(masks)), tmp_path / "r2")
    assert count_stale_latents(cfg, assignments) == 0


def test_check_settings_warns_about_images_without_a_mask(kit, tmp_path):
    from core.train.preflight import check_dataset

    data, masks = masked_dataset(tmp_path, kit)
    first = dataset_images(data)[0]
    (masks / f"{first.stem}.png").unlink()
    problems, assignments = check_dataset(item_values(kit, data, masks, tmp_path))
    [warning] = [p for p in problems if p.field == "conditioning_data_dir"]
    assert warning.severity == "warning"
    assert f"1 of {len(assignments)} images have no mask in {masks}" in warning.message
    assert first.name in warning.message
    problems, _ = check_dataset(item_values(kit, data, masks, tmp_path).model_copy(update={"masked_loss": False}))
    assert not [p for p in problems if p.field == "conditioning_data_dir"]


def test_start_checks_read_each_subsets_own_mask_settings(kit, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    folder = str(kit / "dataset" / "5_demo")

    def problems(*subsets, **run):
        values = train_values(kit, tmp_path, train_data_dir=[], masked_loss=True, subsets=list(subsets), **run)
        return [(p.field, p.message.split(":")[0]) for p in mask_problems(validate(TrainConfig, values, "test"))]

    assert problems({"image_dir": folder, "conditioning_data_dir": str(masks)}) == []
    assert problems({"image_dir": folder}, alpha_mask=True) == []
    assert problems({"image_dir": folder}) == [("masked_loss", "masked loss needs masks")]
    assert problems({"image_dir": folder, "alpha_mask": True, "conditioning_data_dir": str(masks)}) == [
        ("alpha_mask", f"subset {folder}")]


def test_a_subsets_own_mask_folder_reaches_the_loss(kit, tmp_path):
    """A run without a mask folder of its own, one subset with black masks: every step's loss is 0."""
    data, masks = masked_dataset(tmp_path, kit, half=False, value=0)
    subsets = [{"image_dir": str(folder), "conditioning_data_dir": str(masks)}
               for folder in sorted(p for p in data.iterdir() if p.is_dir())]
    result = train(train_values(kit, tmp_path / "out", train_data_dir=[], subsets=subsets, masked_loss=True,
                                max_train_steps=2), tmp_path / "run")
    losses = [e["value"] for e in events(tmp_path / "run") if e["event"] == "metric" and e["name"] == "loss"]
    assert result["steps"] == 2 and losses == [0.0, 0.0]
