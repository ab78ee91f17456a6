"""Latent cache benchmark: is the VAE the bottleneck of the `cache` job?

The job's images/s (encode phase) against the VAE alone encoding the same images already decoded
into tensors (same model, batch size, batches and device). Target ratio >= 0.9. The end-to-end
rate (with bucket planning, VAE load and hashing) is shown too. Memory against dataset size is
bench_memory.py.

With no arguments it builds the tiny demo model and draws its images, so it runs on a CPU in a
few minutes. For a real model on a GPU:
    python bench/bench_cache.py --model /path/sd15.safetensors --resolution 512,512 --images 256
    python bench/bench_cache.py --model /path/sdxl.safetensors --resolution 1024,1024 \
        --dataset /path/to/images --images 200 --batch-size 8 --workers 4
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import Row, print_rows  # noqa: E402
from core.config import CacheConfig  # noqa: E402
from core.jobs.protocol import JobContext  # noqa: E402

QUICK = ["--images", "8", "--repeats", "1"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="model path (default: build the tiny demo)")
    parser.add_argument("--vae", default="", help="optional separate VAE")
    parser.add_argument("--dataset", default="", help="image folder for the throughput part "
                        "(default: draw --images demo images)")
    parser.add_argument("--images", type=int, default=64, help="images for the throughput part")
    parser.add_argument("--resolution", default="512,512")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many interleaved timings")
    return parser.parse_args(argv)


def cache_config(args, dataset: Path, model: str, latents_dir: Path, **overrides) -> CacheConfig:
    values = dict(train_data_dir=[str(dataset)], pretrained_model_name_or_path=model, vae=args.vae,
                  latents_dir=str(latents_dir), max_resolution=args.resolution,
                  min_bucket_reso=64,
                  max_bucket_reso=max(1024, *map(int, args.resolution.split(","))),
                  vae_batch_size=args.batch_size, max_data_loader_n_workers=args.workers)
    return CacheConfig(**{**values, **overrides})


def vae_alone(cfg: CacheConfig) -> tuple[Callable[[], float], int]:
    """A timer of the VAE on pre-decoded tensors, batched exactly as the job batches (images/s),
    and the number of images."""
    from core.dataset.buckets import plan_buckets
    from core.dataset.latents import Item, batches_by_bucket, choose_precision, decode, encode_batch, noise_seed
    from core.models.loading import load_vae

    vae, info = load_vae(cfg.pretrained_model_name_or_path, cfg.vae)
    device, dtype = choose_precision(info.original_sdxl_vae, cfg.no_half_vae)
    vae.to(device)
    if dtype != torch.float32:
        vae.to(dtype)
    assignments, _ = plan_buckets(cfg)
    batches = batches_by_bucket([Item(a, Path()) for a in assignments], cfg.vae_batch_size)
    decoded = [(torch.stack([decode(item, cfg.max_image_pixels)[0] for item in batch]),
                [noise_seed(item.assignment.path, False) for item in batch]) for batch in batches]
    encode_batch(vae, *decoded[0], device, dtype)  # warm-up

    def timed() -> float:
        started = time.perf_counter()
        for pixels, seeds in decoded:
            encode_batch(vae, pixels, seeds, device, dtype)
        return len(assignments) / (time.perf_counter() - started)
    return timed, len(assignments)


def job_rate(cfg: CacheConfig, work: Path) -> tuple[float, float]:
    """(encode-phase images/s, end-to-end images/s incl. planning and VAE load) of one job run
    into a fresh cache folder."""
    from core.dataset.latents import run

    with JobContext(work / "run", echo=False) as ctx:
        result = run(cfg.model_copy(update={"latents_dir": str(work / "cache")}), ctx)
    assert result["failed"] == 0 and result["encoded"] > 0, result
    return result["images_per_s"], result["encoded"] / result["seconds"]


def measure(args) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        work = Path(tmp)
        model = args.model
        dataset = Path(args.dataset) if args.dataset else work / "images"
        if not model:
            from core.dataset.demo import build_demo

            model = build_demo(work / "demo", "sd1", num_images=1)["single_file"]
        if not args.dataset:
            from core.dataset.demo import write_dataset

            write_dataset(dataset, args.images, seed=0)
        cfg = cache_config(args, dataset, model, work / "unused")
        bare, count = vae_alone(cfg)
        alone = encode_rate = total_rate = 0.0
        for i in range(args.repeats):  # interleaved, so a slower spell of the machine hits both
            alone = max(alone, bare())
            rates = job_rate(cfg, work / f"job-{i}")
            encode_rate, total_rate = max(encode_rate, rates[0]), max(total_rate, rates[1])
    print(f"model {model}; {count} images at {args.resolution}, batch {args.batch_size}, "
          f"{args.workers} workers, torch threads {torch.get_num_threads()}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"VAE alone on decoded tensors: {alone:8.2f} images/s")
    print(f"cache job, encode phase:      {encode_rate:8.2f} images/s")
    print(f"cache job, end to end:        {total_rate:8.2f} images/s   ratio {total_rate / alone:.3f}  "
          "(with planning, VAE load and hashing)")
    return [Row("cache job vs bare VAE", encode_rate / alone, ">=", 0.9,
                "latent cache job's images/s (encode phase) / the VAE alone on pre-decoded tensors",
                f"{encode_rate:.2f} vs {alone:.2f} images/s, {count} images at {args.resolution}, "
                f"batch {args.batch_size}; end to end {total_rate / alone:.2f}")]


if __name__ == "__main__":
    print_rows(measure(parse_args()))
