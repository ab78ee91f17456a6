"""Latent cache benchmark: is the VAE the bottleneck, and does memory stay flat with dataset size?

1. Throughput: the `cache` job's images/s against the VAE alone encoding the same images already
   decoded into tensors (same model, batch size, batches and device). Target ratio >= 0.9.
2. Memory: peak RSS of a fresh process caching 200 vs 2000 small images. Target ratio <= 1.2.

With no arguments it builds the tiny demo model and draws its images, so it runs on a CPU in a
few minutes. For a real model on a GPU:
    python bench/bench_cache.py --model /path/sd15.safetensors --resolution 512,512 --images 256
    python bench/bench_cache.py --model /path/sdxl.safetensors --resolution 1024,1024 \
        --dataset /path/to/images --images 200 --batch-size 8 --workers 4
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.config import CacheConfig  # noqa: E402
from core.jobs import JobContext  # noqa: E402


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
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    parser.add_argument("--memory-sizes", default="200,2000", help="dataset sizes to compare")
    parser.add_argument("--memory-side", type=int, default=64, help="side of the small images")
    parser.add_argument("--child", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def cache_config(args, dataset: Path, model: str, latents_dir: Path, **overrides) -> CacheConfig:
    values = dict(train_data_dir=[str(dataset)], pretrained_model_name_or_path=model, vae=args.vae,
                  latents_dir=str(latents_dir), max_resolution=args.resolution,
                  min_bucket_reso=64,
                  max_bucket_reso=max(1024, *map(int, args.resolution.split(","))),
                  vae_batch_size=args.batch_size, max_data_loader_n_workers=args.workers)
    return CacheConfig(**{**values, **overrides})


def vae_alone(cfg: CacheConfig, repeats: int) -> tuple[float, int]:
    """Best images/s of the VAE on pre-decoded tensors, batched exactly as the job batches."""
    from core.buckets import plan_buckets
    from core.latents import (Item, batches_by_bucket, choose_precision, decode, encode_batch,
                              noise_seed)
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
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for pixels, seeds in decoded:
            encode_batch(vae, pixels, seeds, device, dtype)
        best = max(best, len(assignments) / (time.perf_counter() - started))
    return best, len(assignments)


def job_rate(cfg: CacheConfig, work: Path, repeats: int) -> tuple[float, float]:
    """Best (encode-phase images/s, end-to-end images/s incl. planning and VAE load) of the job."""
    from core.latents import run

    best_encode = best_total = 0.0
    for i in range(repeats):
        cfg = cfg.model_copy(update={"latents_dir": str(work / f"job-cache-{i}")})
        ctx = JobContext(work / f"job-run-{i}", echo=False)
        result = run(cfg, ctx)
        ctx.close()
        assert result["failed"] == 0 and result["encoded"] > 0, result
        best_encode = max(best_encode, result["images_per_s"])
        best_total = max(best_total, result["encoded"] / result["seconds"])
    return best_encode, best_total


def draw_small_dataset(folder: Path, count: int, side: int) -> None:
    from core.demo import draw_image

    rng = random.Random(count)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        size = (side, side) if i % 2 else (side + side // 2, side)
        draw_image(rng, size)[0].save(folder / f"small_{i:05d}.png")


def child_memory(dataset: str, model: str, args) -> None:
    """In a fresh process: cache the dataset, print peak RSS and the RSS before the job (bytes)."""
    import core.latents
    from diffusers import AutoencoderKL  # noqa: F401  (imported before the baseline is taken)

    before = current_rss()
    side = args.memory_side
    with tempfile.TemporaryDirectory() as work:
        cfg = cache_config(args, Path(dataset), model, Path(work) / "cache",
                           max_resolution=f"{side},{side}", min_bucket_reso=side,
                           max_bucket_reso=2 * side, bucket_reso_steps=side)
        ctx = JobContext(Path(work) / "run", echo=False)
        result = core.latents.run(cfg, ctx)
        ctx.close()
    print(json.dumps({"peak": peak_rss(), "baseline": before, "encoded": result["encoded"]}))


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """High-water resident memory of this process, in bytes.

    On Linux VmHWM is read, not getrusage's ru_maxrss: that one survives exec, so a child
    started from a big parent reports the parent's size."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        return psutil.Process().memory_info().peak_wset
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def memory_peaks(args, model: str, work: Path) -> dict[int, dict]:
    peaks = {}
    for count in [int(n) for n in args.memory_sizes.split(",")]:
        dataset = work / f"small-{count}"
        draw_small_dataset(dataset, count, args.memory_side)
        command = [sys.executable, __file__, "--child", str(dataset), model,
                   "--vae", args.vae, "--batch-size", str(args.batch_size),
                   "--workers", str(args.workers), "--memory-side", str(args.memory_side)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        peaks[count] = json.loads(out.strip().splitlines()[-1])
        assert peaks[count]["encoded"] == count, peaks[count]
    return peaks


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child_memory(*args.child, args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        work = Path(tmp)
        model = args.model
        dataset = Path(args.dataset) if args.dataset else work / "images"
        if not model:
            from core.demo import build_demo

            model = build_demo(work / "demo", "sd1", num_images=1)["single_file"]
        if not args.dataset:
            from core.demo import write_dataset

            write_dataset(dataset, args.images, seed=0)
        cfg = cache_config(args, dataset, model, work / "unused")
        alone, count = vae_alone(cfg, args.repeats)
        encode_rate, total_rate = job_rate(cfg, work, args.repeats)
        print(f"model {model}; {count} images at {args.resolution}, batch {args.batch_size}, "
              f"{args.workers} workers, torch threads {torch.get_num_threads()}, "
              f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
        print(f"VAE alone on decoded tensors: {alone:8.2f} images/s")
        print(f"cache job, encode phase:      {encode_rate:8.2f} images/s   "
              f"ratio {encode_rate / alone:.3f}  (target >= 0.9)")
        print(f"cache job, end to end:        {total_rate:8.2f} images/s   "
              f"ratio {total_rate / alone:.3f}  (with planning, VAE load and hashing)")
        peaks = memory_peaks(args, model, work)
        small, large = sorted(peaks)
        mib = 1024 * 1024
        for count in (small, large):
            p = peaks[count]
            print(f"peak RSS caching {count:5d} images of {args.memory_side}px: "
                  f"{p['peak'] / mib:8.1f} MiB ({(p['peak'] - p['baseline']) / mib:6.1f} MiB "
                  f"above the process after imports)")
        print(f"peak RSS ratio {large}/{small}: {peaks[large]['peak'] / peaks[small]['peak']:.3f}"
              f"  (target <= 1.2)")


if __name__ == "__main__":
    main()
