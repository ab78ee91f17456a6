"""The latent cache job on the tiny demo model: cached latents equal an independent encode of the
same crop, each changed input rebuilds its files, stop and continue, bad images, streaming."""
from __future__ import annotations

import json
import os
import threading
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

from core.config import CacheConfig
from core.dataset.buckets import crop_to_bucket, plan_buckets
from core.dataset.images import open_image
from core.dataset.latents import (
    cache_path_for,
    choose_precision,
    is_cache_valid,
    load_cached,
    noise_seed,
    prefetch,
    recipe,
)
from core.dataset.latents import run as run_cache
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder

NUM_IMAGES = 8


@pytest.fixture(scope="module")
def demo(demo_kit):
    return demo_kit("sd1", NUM_IMAGES, 4)


@pytest.fixture
def dataset(demo, copy_dataset):
    """A fresh copy of the demo images (tests change them)."""
    return copy_dataset(demo)


def make_cfg(demo, dataset, tmp_path, **overrides) -> CacheConfig:
    values = dict(train_data_dir=[str(dataset)], pretrained_model_name_or_path=str(
        demo / "model.safetensors"), latents_dir=str(tmp_path / "cache"), max_resolution="128,128",
                  min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=64, vae_batch_size=3,
                  max_data_loader_n_workers=2)
    return CacheConfig(**{**values, **overrides})


def cache_run(cfg, tmp_path, name="run") -> dict:
    with JobContext(tmp_path / name, echo=False) as ctx:
        return run_cache(cfg, ctx)


def cache_files(cfg) -> dict[str, int]:
    """Cache file name -> mtime_ns."""
    folder = cfg.latents_dir
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}


def reference_latents(vae, image: Image.Image, seed: int) -> torch.Tensor:
    """An encode written out by hand: pixels to [-1, 1], posterior mean + std * seeded noise."""
    pixels = torch.tensor(np.array(image), dtype=torch.float32).permute(2, 0, 1) / 255 * 2 - 1
    with torch.no_grad():
        moments = vae.encoder(pixels[None])
        moments = vae.quant_conv(moments)
    mean, logvar = moments[0].chunk(2, dim=0)
    std = torch.exp(0.5 * logvar.clamp(-30, 20))
    return mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))


def test_cached_latents_equal_an_independent_encode(demo, dataset, tmp_path):
    from diffusers import AutoencoderKL

    cfg = make_cfg(demo, dataset, tmp_path, flip_aug=True)
    result = cache_run(cfg, tmp_path)
    assert result["complete"] and result["encoded"] == NUM_IMAGES
    assert result["skipped"] == result["failed"] == 0
    vae = AutoencoderKL.from_pretrained(demo / "model", subfolder="vae", local_files_only=True)
    assignments, _ = plan_buckets(cfg)
    assert len({a.bucket for a in assignments}) > 1  # several buckets, so several batch shapes
    for a in assignments:
        crop = crop_to_bucket(open_image(a.path), a)
        cached = load_cached(cache_path_for(a.path, cfg))
        width, height = a.bucket
        assert cached["latents"].shape == (4, height // 8, width // 8)
        torch.testing.assert_close(cached["latents"],
                                   reference_latents(vae, crop, noise_seed(a.path, False)),
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cached["latents_flipped"],
                                   reference_latents(vae, ImageOps.mirror(crop),
                                                     noise_seed(a.path, True)),
                                   atol=1e-5, rtol=1e-4)
        meta = cached["meta"]
        assert meta["bucket"] == list(a.bucket) and meta["crop"] == list(a.crop)
        assert meta["resized"] == list(a.resized) and meta["original"] == list(a.original)
        assert meta["flip"] is True and meta["scaled"] is False and meta["dtype"] == "float32"
        assert meta["scaling_factor"] == pytest.approx(0.18215)


def test_batch_size_and_workers_do_not_change_latents(demo, dataset, tmp_path):
    first = make_cfg(demo, dataset, tmp_path, latents_dir=str(tmp_path / "a"), vae_batch_size=4)
    second = make_cfg(demo, dataset, tmp_path, latents_dir=str(tmp_path / "b"), vae_batch_size=1,
                      max_data_loader_n_workers=0)
    cache_run(first, tmp_path, "a")
    cache_run(second, tmp_path, "b")
    assignments, _ = plan_buckets(first)
    for a in assignments:
        torch.testing.assert_close(load_cached(cache_path_for(a.path, first))["latents"],
                                   load_cached(cache_path_for(a.path, second))["latents"])


def test_cache_paths_beside_images_and_in_a_folder(demo, tmp_path):
    beside = make_cfg(demo, tmp_path, tmp_path, latents_dir="")
    png, jpg = tmp_path / "a" / "x.png", tmp_path / "a" / "x.jpg"
    assert cache_path_for(png, beside) == tmp_path / "a" / "x.png.latents.safetensors"
    assert cache_path_for(jpg, beside) != cache_path_for(png, beside)
    shared = make_cfg(demo, tmp_path, tmp_path)
    one, two = cache_path_for(png, shared), cache_path_for(tmp_path / "b" / "x.png", shared)
    assert one != two and one.parent == two.parent == tmp_path / "cache"
    assert one.name.startswith("x-") and one.name.endswith(".latents.safetensors")


def test_cache_beside_the_images_by_default(demo, dataset, tmp_path):
    cfg = make_cfg(demo, dataset, tmp_path, latents_dir="")
    assert cache_run(cfg, tmp_path)["encoded"] == NUM_IMAGES
    assert len(list(dataset.rglob("*.latents.safetensors"))) == NUM_IMAGES
    assert cache_run(cfg, tmp_path, "again")["skipped"] == NUM_IMAGES


def _changed_vae(demo, tmp_path) -> str:
    prefix = "first_stage_model."
    weights = {k[len(prefix):]: v for k, v in load_file(demo / "model.safetensors").items()
               if k.startswith(prefix)}
    weights["encoder.conv_in.bias"] += 0.01
    save_file(weights, tmp_path / "other_vae.safetensors")
    return str(tmp_path / "other_vae.safetensors")


def _recipes(cfg) -> dict:
    return {a.path: (a.bucket, a.resized, a.crop) for a in plan_buckets(cfg)[0]}


CHANGES = {  # name -> (config change, whether every image must be encoded again)
    "nothing": (lambda demo, tmp: {}, False),
    "vae": (lambda demo, tmp: {"vae": _changed_vae(demo, tmp)}, True),
    "flip wanted": (lambda demo, tmp: {"flip_aug": True}, True),
    "resolution": (lambda demo, tmp: {"max_resolution": "192,192"}, False),
    "no upscale": (lambda demo, tmp: {"bucket_no_upscale": True}, False),
    "step": (lambda demo, tmp: {"bucket_reso_steps": 32, "min_bucket_reso": 64}, False),
}


@pytest.mark.parametrize("change", CHANGES)
def test_cache_is_rebuilt_when_its_inputs_change(demo, dataset, tmp_path, change):
    """Every file is rebuilt for a new VAE or flip; for new bucket settings exactly the images
    whose bucket, resize or crop changed are rebuilt."""
    config_change, everything = CHANGES[change]
    cfg = make_cfg(demo, dataset, tmp_path)
    assert cache_run(cfg, tmp_path, "first")["encoded"] == NUM_IMAGES
    before = cache_files(cfg)
    changed = make_cfg(demo, dataset, tmp_path, **config_change(demo, tmp_path))
    old, new = _recipes(cfg), _recipes(changed)
    expected = NUM_IMAGES if everything else sum(old[path] != new[path] for path in old)
    if change != "nothing":
        assert expected > 0
    result = cache_run(changed, tmp_path, "second")
    assert (result["encoded"], result["skipped"]) == (expected, NUM_IMAGES - expected)
    after = cache_files(cfg)
    assert sum(after[name] != before[name] for name in before) == expected
    assert cache_run(changed, tmp_path, "third")["skipped"] == NUM_IMAGES


def test_changed_image_content_or_mtime_rebuilds_that_image_only(demo, dataset, tmp_path):
    cfg = make_cfg(demo, dataset, tmp_path)
    cache_run(cfg, tmp_path, "first")
    images = sorted(p for p in dataset.rglob("*.png"))
    redrawn, touched = images[0], images[1]
    with Image.open(redrawn) as im:
        ImageOps.invert(im.convert("RGB")).save(redrawn)
    os.utime(touched, ns=(time.time_ns(), os.stat(touched).st_mtime_ns + 10**9))
    old = load_cached(cache_path_for(redrawn, cfg))["latents"]
    result = cache_run(cfg, tmp_path, "second")
    assert (result["encoded"], result["skipped"]) == (2, NUM_IMAGES - 2)
    assert not torch.allclose(load_cached(cache_path_for(redrawn, cfg))["latents"], old)


def test_damaged_cache_file_is_rebuilt(demo, dataset, tmp_path):
    cfg = make_cfg(demo, dataset, tmp_path)
    cache_run(cfg, tmp_path, "first")
    victim = next(iter(sorted(cache_files(cfg))))
    path = os.path.join(cfg.latents_dir, victim)
    with open(path, "r+b") as f:
        f.truncate(100)
    assert cache_run(cfg, tmp_path, "second")["encoded"] == 1
    assert load_cached(path)["latents"].shape[0] == 4


def test_recipe_checks_dtype_bucket_shape_and_flip(demo, dataset, tmp_path):
    cfg = make_cfg(demo, dataset, tmp_path, flip_aug=True)
    result = cache_run(cfg, tmp_path)
    a = plan_buckets(cfg)[0][0]
    path, stat = cache_path_for(a.path, cfg), os.stat(a.path)
    assert is_cache_valid(path, recipe(a, stat, result["vae_identity"], torch.float32), flip=True)
    assert not is_cache_valid(path, recipe(a, stat, result["vae_identity"], torch.float16), True)
    assert not is_cache_valid(path, recipe(a, stat, "0" * 64, torch.float32), True)
    cached = load_cached(path)
    save_file({"latents": cached["latents"]},
              path, metadata={k: json.dumps(v) for k, v in cached["meta"].items()})
    assert not is_cache_valid(path, recipe(a, stat, result["vae_identity"], torch.float32), True)
    assert is_cache_valid(path, recipe(a, stat, result["vae_identity"], torch.float32), False)


class StopAfter(JobContext):
    """A job context that asks to stop once `count` cache files are complete (a file being written is still
    its temp file, which does not count)."""

    def __init__(self, run_dir, cache_dir, count):
        super().__init__(run_dir, echo=False)
        self.cache_dir, self.count = cache_dir, count

    def progress(self, step, total):
        super().progress(step, total)
        done = [n for n in os.listdir(self.cache_dir) if n.endswith(".latents.safetensors")] \
            if os.path.isdir(self.cache_dir) else []
        if len(done) >= self.count:
            self.run.request_stop()


def test_stop_leaves_complete_files_and_the_next_run_continues(demo, dataset, tmp_path):
    cfg = make_cfg(demo, dataset, tmp_path, vae_batch_size=1)
    with StopAfter(tmp_path / "stopped", cfg.latents_dir, 3) as ctx:
        first = run_cache(cfg, ctx)
    assert not first["complete"] and 3 <= first["encoded"] < NUM_IMAGES
    names = os.listdir(cfg.latents_dir)
    assert len(names) == first["encoded"] and all(n.endswith(".latents.safetensors") for n in names)
    assert all(load_cached(os.path.join(cfg.latents_dir, n))["latents"].shape[0] == 4
               for n in names)
    second = cache_run(cfg, tmp_path, "continued")
    assert second["complete"]
    done = first["encoded"]
    assert (second["encoded"], second["skipped"]) == (NUM_IMAGES - done, done)


def test_bad_images_are_reported_and_skipped(demo, dataset, tmp_path):
    folder = next(p for p in dataset.iterdir() if p.is_dir())
    jpeg = next(dataset.rglob("*.jpg"))
    (folder / "truncated.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 3])
    (folder / "notes.png").write_text("not an image")
    cfg = make_cfg(demo, dataset, tmp_path)
    result = cache_run(cfg, tmp_path)
    assert result["complete"]
    assert (result["encoded"], result["failed"]) == (NUM_IMAGES, 2)
    events = RunFolder(tmp_path / "run").read_events()
    warned = {os.path.basename(e.get("path", "")) for e in events if e["event"] == "warning"}
    assert {"truncated.jpg", "notes.png"} <= warned
    last = events[-1]
    assert last["event"] == "progress" and last["step"] == last["total"] == NUM_IMAGES + 2


def test_nan_latents_are_not_cached(demo, dataset, tmp_path):
    prefix = "first_stage_model."
    weights = {k[len(prefix):]: v for k, v in load_file(demo / "model.safetensors").items()
               if k.startswith(prefix)}
    weights["quant_conv.bias"][0] = float("nan")
    save_file(weights, tmp_path / "nan_vae.safetensors")
    cfg = make_cfg(demo, dataset, tmp_path, vae=str(tmp_path / "nan_vae.safetensors"))
    result = cache_run(cfg, tmp_path)
    assert (result["encoded"], result["failed"]) == (0, NUM_IMAGES)
    assert not os.path.exists(cfg.latents_dir) or not os.listdir(cfg.latents_dir)
    assert "no_half_vae" in (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")


def test_cache_job_follows_the_job_protocol(demo, dataset, tmp_path):
    from core.jobs.protocol import execute

    cfg = make_cfg(demo, dataset, tmp_path)
    assert execute("cache", cfg, tmp_path / "job", lambda: run_cache) == 0
    result = json.loads((tmp_path / "job" / "result.json").read_text(encoding="utf-8"))
    assert result["encoded"] == NUM_IMAGES
    assert json.loads((tmp_path / "job" / "status.json").read_text())["state"] == "done"


def test_prefetch_keeps_order_and_stays_bounded():
    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        if i == 5:
            raise ValueError("bad item")
        return i * 10

    seen = []
    for item, result in prefetch(work, range(40), workers=3, ahead=4):
        time.sleep(0.002)
        with lock:
            assert len(started) <= len(seen) + 5  # at most `ahead` (+ the refill) in advance
        seen.append((item, result))
    assert [item for item, _ in seen] == list(range(40))
    assert isinstance(seen[5][1], ValueError)
    assert all(result == item * 10 for item, result in seen if item != 5)


def test_precision_choice():
    cpu, fp32 = torch.device("cpu"), torch.float32
    cuda = torch.device("cuda")
    assert choose_precision(False, False, cuda=False) == (cpu, fp32)
    assert choose_precision(True, False, cuda=False) == (cpu, fp32)
    assert choose_precision(False, False, cuda=True, bf16=True) == (cuda, torch.bfloat16)
    assert choose_precision(False, False, cuda=True, bf16=False) == (cuda, torch.float16)
    assert choose_precision(True, False, cuda=True, bf16=True) == (cuda, fp32)
    assert choose_precision(False, True, cuda=True, bf16=True) == (cuda, fp32)
