"""Memory against dataset size: does the latent cache job's peak memory stay flat as the dataset grows?

The `cache` job (bucketing, decoding on worker threads, VAE encoding, cache writes) runs in a fresh
process on N and then 4N small images with the tiny demo model. Each process reports its resident
memory after the imports (baseline) and its high-water mark; growth = peak - baseline.
Ratio = growth at 4N / growth at N: 1.0 when memory does not depend on the dataset size, 4.0 when
it is proportional to it. Target <= 1.25 (what is held per image, such as its bucket assignment,
stays small next to the model and one batch). The bytes held per extra image are shown too.

    python bench/bench_memory.py [--images 250] [--side 64] [--model /path/model.safetensors]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row, bench_env, current_rss, peak_rss, print_rows  # noqa: E402

QUICK = ["--images", "40"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="model path (default: build the tiny demo)")
    parser.add_argument("--images", type=int, default=250, help="N: the job runs on N and on 4N images")
    parser.add_argument("--side", type=int, default=64, help="side of the drawn images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def draw_small_dataset(folder: Path, count: int, side: int) -> None:
    """Half square, half 3:2 images, so the job plans two buckets."""
    from core.dataset.demo import draw_image

    rng = random.Random(count)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        size = (side, side) if i % 2 else (side + side // 2, side)
        draw_image(rng, size)[0].save(folder / f"small_{i:05d}.png")


def child_memory(dataset: str, model: str, args) -> None:
    """In a fresh process: cache the dataset, print the peak and the baseline RSS (bytes) as JSON."""
    import torch
    from diffusers import AutoencoderKL  # noqa: F401  (imported before the baseline is taken)

    import core.dataset.latents
    from core.config import CacheConfig
    from core.jobs.protocol import JobContext

    torch.set_num_threads(1)  # only memory is measured here; one thread is fastest on a busy machine
    before = current_rss()
    side = args.side
    with tempfile.TemporaryDirectory() as work:
        cfg = CacheConfig(train_data_dir=[dataset], pretrained_model_name_or_path=model,
                          latents_dir=str(Path(work) / "cache"), max_resolution=f"{side},{side}",
                          min_bucket_reso=side, max_bucket_reso=2 * side, bucket_reso_steps=side,
                          vae_batch_size=args.batch_size, max_data_loader_n_workers=args.workers)
        with JobContext(Path(work) / "run", echo=False) as ctx:
            result = core.dataset.latents.run(cfg, ctx)
    print(json.dumps({"peak": peak_rss(), "baseline": before, "encoded": result["encoded"]}))


def memory_of(count: int, args, model: str, work: Path) -> dict:
    dataset = work / f"small-{count}"
    draw_small_dataset(dataset, count, args.side)
    command = [sys.executable, __file__, "--child", str(dataset), model, "--side", str(args.side),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=bench_env()).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["encoded"] == count, result
    return result


def measure(args) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        model = args.model
        if not model:
            from core.dataset.demo import build_demo

            model = build_demo(work / "demo", "sd1", num_images=1)["single_file"]
        small, large = args.images, 4 * args.images
        memory = {count: memory_of(count, args, model, work) for count in (small, large)}
    mib = 2**20
    growth = {count: m["peak"] - m["baseline"] for count, m in memory.items()}
    for count, m in memory.items():
        print(f"cache job on {count:5d} images of {args.side}px: peak RSS {m['peak'] / mib:7.1f} MiB, "
              f"{growth[count] / mib:6.1f} MiB above the process after imports")
    per_image = (memory[large]["peak"] - memory[small]["peak"]) / (large - small)
    return [Row(f"memory: cache job, {large} vs {small} images", growth[large] / growth[small], "<=", 1.25,
                "peak RSS growth of the cache job at 4N images / at N (1 = flat, 4 = grows with the dataset)",
                f"{growth[small] / mib:.0f} -> {growth[large] / mib:.0f} MiB above imports, "
                f"{per_image / 1024:.1f} KiB per extra image")]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child_memory(*args.child, args)
        return
    print_rows(measure(args))


if __name__ == "__main__":
    main()
