"""The latent cache: every image of a dataset encoded once by the model's VAE (job `cache`).

Images are planned with `core.dataset.buckets.plan_buckets`, grouped by bucket and encoded in batches of
`vae_batch_size`; worker threads decode, resize and crop the next images while the VAE runs, and a
writer thread saves finished files, so only a few batches are ever held in memory.

What is stored follows kohya sd-scripts (`cache_batch_latents`): one sample of the VAE posterior
(`latent_dist.sample()`), NOT multiplied by the scaling factor (the trainer multiplies by the
`scaling_factor` recorded in the file). Unlike kohya, the sample's noise is seeded per image
(`noise_seed`), so a cache is reproducible and does not depend on how images were batched.

One file per image, `<image file name>.latents.safetensors` beside the image (the name shortened
with a hash where it would be too long for the drive: core.fsutil.fitting_name), or
`<stem>-<hash of the image's absolute path>.latents.safetensors` in `latents_dir` (so images of
different folders never collide). Tensors: `latents` [C, H/8, W/8] float32, and `latents_flipped`
(the horizontally flipped crop) with flip_aug, and `mask` [1, H/8, W/8] float32 with masked_loss (the
image's loss mask resized and cropped as the image and reduced to latent size, core.dataset.masks; the
flipped latents use it flipped). The metadata records what made the file (VAE identity, image size and
mtime, bucket, resize, crop, compute dtype, and the mask's source: the alpha channel, or the mask file's
path, size and mtime); a file whose recipe differs from the current one is rebuilt, a matching one is
skipped. A file made without a mask is stale when masked_loss wants one; one with a mask serves a run
without masked loss too (its latents are the same). Files are written atomically, so a
stopped run leaves only complete files and the next run continues where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from core.config import CacheConfig
from core.dataset.buckets import BucketAssignment, plan_buckets
from core.dataset.images import ImageError
from core.dataset.masks import MaskSource, mask_finder, mask_to_size, training_sample
from core.dataset.prefetch import prefetch
from core.fsutil import DISK_FULL, atomic_path, fitting_name
from core.jobs.protocol import JobContext, JobStopped, failure_message
from core.models.loading import load_vae
from core.models.single_file import saved_bytes

CACHE_SUFFIX = ".latents.safetensors"
CACHE_FORMAT = 1
# Recipe entries compared to decide whether a cache file is still valid (flip is checked apart).
RECIPE_KEYS = ("format", "vae", "image_bytes", "image_mtime_ns", "original", "bucket", "resized",
               "crop", "dtype")


def cache_path_for(image_path: str | os.PathLike, cfg: CacheConfig) -> Path:
    """Where the cache file of an image lives (see the module docstring)."""
    image_path = Path(os.path.abspath(image_path))
    if not cfg.latents_dir.strip():
        return fitting_name(image_path, after=CACHE_SUFFIX)
    digest = hashlib.sha256(os.path.normcase(str(image_path)).encode("utf-8")).hexdigest()[:16]
    folder = Path(os.path.abspath(os.path.expanduser(cfg.latents_dir)))
    return folder / f"{image_path.stem[:60]}-{digest}{CACHE_SUFFIX}"


def noise_seed(image_path: str | os.PathLike, flipped: bool) -> int:
    """The seed of the posterior sample's noise for one image (and its flipped version)."""
    key = f"{os.path.normcase(os.path.abspath(image_path))}|{'flipped' if flipped else 'plain'}"
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") >> 1


def recipe(assignment: BucketAssignment, stat: os.stat_result, vae_identity: str,
           dtype: torch.dtype, mask: MaskSource | None = None) -> dict[str, str]:
    """What a cache file is made from, as the JSON strings stored in its metadata; with a mask source,
    its "mask" entry too (OSError when the mask file is gone)."""
    values = {"format": CACHE_FORMAT, "vae": vae_identity, "image_bytes": stat.st_size,
              "image_mtime_ns": stat.st_mtime_ns, "original": list(assignment.original),
              "bucket": list(assignment.bucket), "resized": list(assignment.resized),
              "crop": list(assignment.crop), "dtype": str(dtype).removeprefix("torch.")}
    if mask is not None:
        values["mask"] = mask_recipe(mask)
    return {key: json.dumps(value) for key, value in values.items()}


def mask_recipe(mask: MaskSource) -> dict:
    """The "mask" entry of a recipe: the alpha channel (the image's own size and mtime cover it), or the
    mask file with its size and mtime."""
    if mask.alpha:
        return {"source": "alpha"}
    stat = os.stat(mask.path)
    return {"source": "file", "path": str(mask.path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_cache_valid(path: str | os.PathLike, expected: dict[str, str], flip: bool,
                   downscale: int = 8) -> bool:
    """True when the file exists, is readable, matches `expected` (a `recipe`), has latents of the
    bucket's size, flipped latents if `flip` is wanted and a mask if the recipe has one. Reads the
    header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            shape = f.get_slice("latents").get_shape() if "latents" in keys else None
    except Exception:  # missing, truncated or not a safetensors file: rebuild it
        return False
    if any(meta.get(key) != expected[key] for key in RECIPE_KEYS):
        return False
    if "mask" in expected and (meta.get("mask") != expected["mask"] or "mask" not in keys):
        return False
    width, height = json.loads(expected["bucket"])
    if shape is None or list(shape[1:]) != [height // downscale, width // downscale]:
        return False
    return not flip or "latents_flipped" in keys


def load_cached(path: str | os.PathLike) -> dict:
    """{"latents": tensor, ["latents_flipped": tensor,] ["mask": tensor,] "meta": {name: parsed value}}."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        out = {key: f.get_tensor(key) for key in f.keys()}
        out["meta"] = {key: json.loads(value) for key, value in (f.metadata() or {}).items()}
    return out


def choose_precision(original_sdxl_vae: bool, no_half_vae: bool, cuda: bool | None = None,
                     bf16: bool | None = None) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) for encoding: CPU fp32 without CUDA; on CUDA fp32 when asked
    (no_half_vae) or for SDXL's original VAE (it overflows in fp16), else bf16 where the GPU
    supports it, else fp16."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        return torch.device("cpu"), torch.float32
    if no_half_vae or original_sdxl_vae:
        return torch.device("cuda"), torch.float32
    bf16 = torch.cuda.is_bf16_supported() if bf16 is None else bf16
    return torch.device("cuda"), torch.bfloat16 if bf16 else torch.float16


def pixels_of(image) -> torch.Tensor:
    """An RGB PIL image as a [3, H, W] float32 tensor in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def encode_batch(vae, pixels: torch.Tensor, seeds: list[int], device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """Posterior samples (unscaled, float32 on the CPU) for a [B, 3, H, W] batch in [-1, 1]."""
    with torch.inference_mode():
        dist = vae.encode(pixels.to(device, dtype, non_blocking=True)).latent_dist
        mean, std = dist.mean.float(), dist.std.float()
        noise = torch.stack([torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(s))
                             for s in seeds])
        return (mean + std * noise.to(device)).cpu()


def save_cache(path: Path, latents: torch.Tensor, flipped: torch.Tensor | None,
               meta: dict[str, str], mask: torch.Tensor | None = None) -> None:
    """Write one cache file atomically."""
    from safetensors.torch import save_file

    tensors = {"latents": latents.contiguous().clone()}
    if flipped is not None:
        tensors["latents_flipped"] = flipped.contiguous().clone()
    if mask is not None:
        tensors["mask"] = mask.contiguous().clone()
    with atomic_path(path, saved_bytes(tensors.values())) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


@dataclass
class Item:
    """One image to encode."""
    assignment: BucketAssignment
    cache: Path
    mask: MaskSource | None = None


def decode(item: Item, max_pixels: int) -> tuple[torch.Tensor, torch.Tensor | None, os.stat_result]:
    """The image's training crop as pixels, its mask cropped alike (None without a mask source), and its
    file stat (taken before reading)."""
    stat = os.stat(item.assignment.path)
    image, mask = training_sample(item.assignment, item.mask, max_pixels)
    return pixels_of(image), mask, stat


def batches_by_bucket(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Items grouped by bucket (largest first), split into batches of at most batch_size."""
    groups: dict[tuple[int, int], list[Item]] = {}
    for item in items:
        groups.setdefault(item.assignment.bucket, []).append(item)
    ordered = sorted(groups.items(), key=lambda kv: (-kv[0][0] * kv[0][1], kv[0]))
    return [group[i:i + batch_size] for _, group in ordered
            for i in range(0, len(group), batch_size)]


class Counts:
    """Encoded / skipped (valid cache) / failed images, with the progress report."""

    def __init__(self, ctx: JobContext, total: int, failed: int):
        self.ctx, self.total = ctx, total
        self.encoded = self.skipped = 0
        self.failed = failed

    def fail(self, reason: str, path) -> None:
        self.failed += 1
        self.ctx.skipped(path, reason)

    def report(self) -> None:
        self.ctx.progress(self.encoded + self.skipped + self.failed, self.total)


def run(cfg: CacheConfig, ctx: JobContext) -> dict:
    """The `cache` job: encode every image whose cache is missing or stale."""
    started = time.perf_counter()
    try:
        assignments, broken = plan_buckets(cfg, ctx)
    except JobStopped:
        ctx.log("stopped while planning buckets; nothing was encoded")
        return {"complete": False, "images": 0, "encoded": 0, "skipped": 0, "failed": 0}
    vae, info = load_vae(cfg.pretrained_model_name_or_path, cfg.vae)
    device, dtype = choose_precision(info.original_sdxl_vae, cfg.no_half_vae)
    vae.to(device)
    if dtype != torch.float32:
        vae.to(dtype)
    ctx.log(f"VAE from {info.source} ({info.layout}, {info.arch}, {info.parameters:,} parameters, "
            f"identity {info.identity[:12]}) on {device} in {str(dtype).removeprefix('torch.')}")
    counts = Counts(ctx, len(assignments) + len(broken), len(broken))
    todo = stale_items(cfg, assignments, info.identity, dtype, counts, downscale(vae))
    batches = batches_by_bucket(todo, cfg.vae_batch_size)
    ctx.log(f"{len(assignments)} images: {counts.skipped} cached already, {len(todo)} to encode "
            f"in {len(batches)} batches, {len(broken)} unreadable")
    counts.report()
    complete = True
    encoding = time.perf_counter()
    try:
        encode_all(cfg, ctx, vae, info, device, dtype, batches, counts)
    except JobStopped:
        complete = False
        ctx.log("stopped: every file written is complete; run again to continue")
    now = time.perf_counter()
    rate = counts.encoded / max(now - encoding, 1e-9)
    ctx.log(f"latent cache {'complete' if complete else 'PARTIAL (stopped)'}: {counts.encoded} "
            f"encoded ({rate:.1f} images/s), {counts.skipped} valid and skipped, "
            f"{counts.failed} failed, {now - started:.1f} s")
    return {"complete": complete, "images": counts.total, "encoded": counts.encoded,
            "skipped": counts.skipped, "failed": counts.failed, "vae_identity": info.identity,
            "dtype": str(dtype).removeprefix("torch."), "device": str(device),
            "seconds": round(now - started, 3), "encode_seconds": round(now - encoding, 3),
            "images_per_s": round(rate, 3)}


def downscale(vae) -> int:
    """Pixels per latent along a side (8 for Stable Diffusion's VAEs)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def stale_items(cfg: CacheConfig, assignments: list[BucketAssignment], vae_identity: str,
                dtype: torch.dtype, counts: Counts, scale: int) -> list[Item]:
    """Images whose cache is missing or stale; valid ones are counted as skipped."""
    todo = []
    masks = mask_finder(cfg)
    for assignment in assignments:
        cache = cache_path_for(assignment.path, cfg)
        try:
            mask = masks.find(assignment.path)
        except ImageError as err:
            counts.fail(err.reason, assignment.path)
            continue
        try:
            expected = recipe(assignment, os.stat(assignment.path), vae_identity, dtype, mask)
        except OSError:
            expected = None  # the image or its mask is gone: decoding reports it
        if expected and is_cache_valid(cache, expected, cfg.flip_aug, scale):
            counts.skipped += 1
        else:
            todo.append(Item(assignment, cache, mask))
    return todo


def encode_all(cfg: CacheConfig, ctx: JobContext, vae, info, device, dtype,
               batches: list[list[Item]], counts: Counts) -> None:
    """Decode ahead, encode batch by batch, write on a writer thread; stops between batches."""
    ahead = 2 * cfg.vae_batch_size + cfg.max_data_loader_n_workers
    decoded = prefetch(lambda item: decode(item, cfg.max_image_pixels),
                       (item for batch in batches for item in batch),
                       cfg.max_data_loader_n_workers, ahead)
    with closing(decoded), ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        writes: deque[tuple[Item, Future]] = deque()
        try:
            for batch in batches:
                ctx.check_stop()
                ready = []
                for item, result in islice(decoded, len(batch)):
                    if isinstance(result, Exception):
                        counts.fail(_reason(result), item.assignment.path)
                    else:
                        ready.append((item, *result))
                if ready:
                    for item, latents, flipped, meta, mask in encode_ready(cfg, vae, info, device,
                                                                           dtype, ready, counts):
                        writes.append((item, writer.submit(save_cache, item.cache, latents,
                                                           flipped, meta, mask)))
                while writes and (writes[0][1].done() or len(writes) > 2 * cfg.vae_batch_size):
                    _finish_write(*writes.popleft(), counts)
                counts.report()
        finally:
            while writes:
                _finish_write(*writes.popleft(), counts)
            counts.report()


def encode_ready(cfg: CacheConfig, vae, info, device, dtype, ready: list, counts: Counts) -> list:
    """Encode one batch of decoded images; [(item, latents, flipped, meta, mask at latent size or None)]
    to write. Images whose latents are not finite (fp16 overflow) are reported and left out."""
    pixels = torch.stack([pixels for _, pixels, _, _ in ready])
    paths = [item.assignment.path for item, _, _, _ in ready]
    latents = encode_batch(vae, pixels, [noise_seed(p, False) for p in paths], device, dtype)
    flipped = None
    if cfg.flip_aug:
        flipped = encode_batch(vae, pixels.flip(-1), [noise_seed(p, True) for p in paths],
                               device, dtype)
    out = []
    for i, (item, _, mask, stat) in enumerate(ready):
        one_flipped = flipped[i] if flipped is not None else None
        if not torch.isfinite(latents[i]).all() or (
                one_flipped is not None and not torch.isfinite(one_flipped).all()):
            counts.fail(f"the VAE produced NaN/inf in {str(dtype).removeprefix('torch.')}: "
                        "set no_half_vae (or use a fixed fp16 VAE)", item.assignment.path)
            continue
        try:
            meta = {**recipe(item.assignment, stat, info.identity, dtype, item.mask),
                    "flip": json.dumps(one_flipped is not None),
                    "scaling_factor": json.dumps(info.scaling_factor), "scaled": "false",
                    "sample": json.dumps("posterior sample, noise seeded per image"),
                    "image": json.dumps(str(item.assignment.path))}
        except OSError as exc:  # the mask file went away after it was read
            counts.fail(f"its mask {item.mask.path}: {exc.strerror or exc}", item.assignment.path)
            continue
        if mask is not None:
            mask = mask_to_size(mask.unsqueeze(0), latents.shape[-2:])[0]
        out.append((item, latents[i], one_flipped, meta, mask))
    return out


def _finish_write(item: Item, future: Future, counts: Counts) -> None:
    try:
        future.result()
    except OSError as exc:
        if exc.errno in DISK_FULL:  # so will every other file be: end the job with the one clear message
            raise
        counts.fail(f"cannot write the cache file {item.cache}: {exc.strerror or exc}",
                    item.assignment.path)
    else:
        counts.encoded += 1


def _reason(exc: Exception) -> str:
    if isinstance(exc, ImageError):
        return exc.reason
    return failure_message(exc)
