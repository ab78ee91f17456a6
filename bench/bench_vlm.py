"""Vision-language captioning benchmark: is the model the bottleneck of the `vlm_caption` job?

In one run, on the same loaded model, batch size and generation settings: the job's images/s (its `run` function
end to end: listing, decoding on worker threads, the processor, generation, clean-up and writing every caption file)
against a bare `model.generate` loop over the same batches already run through the processor, in memory. Target
ratio >= 0.9.

With no arguments it builds a random LLaVA (JoyCaption's layout: SigLIP vision, Llama text) with the tests'
builder at a size where generation costs what it does relative to the rest in a real captioner (a real one is
far larger, which only raises the ratio), and draws JPEG images of mixed sizes. For a real model on a GPU:
    python bench/bench_vlm.py --model /path/Florence-2-large --dataset /path/images --batch-size 8
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, Row, print_rows, studio_home  # noqa: E402

QUICK = ["--images", "8", "--repeats", "1", "--hidden", "128", "--layers", "2"]
SIZES = [(512, 512), (640, 480), (480, 640), (800, 600)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="model folder (default: build a random LLaVA)")
    parser.add_argument("--dataset", default="", help="image folder (default: draw --images JPEGs)")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=384, help="width of the random model")
    parser.add_argument("--layers", type=int, default=4, help="layers of the random model's parts")
    parser.add_argument("--image-size", type=int, default=128, help="vision input side of the random model")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many interleaved timings")
    return parser.parse_args(argv)


def draw_images(folder: Path, count: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        pixels = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((width, height)).save(folder / f"img{i:04d}.jpg", quality=90)
    return folder


def bare_seconds(cfg, batches: list[dict]) -> float:
    """The model alone: generate over batches the processor made beforehand."""
    import torch

    from core.captions.taggers.vlm import load_vlm

    vlm = load_vlm(cfg.model_dir, cfg.dtype, cfg.quantization)
    started = time.perf_counter()
    with torch.inference_mode():
        for inputs in batches:
            vlm.model.generate(**inputs, max_new_tokens=cfg.max_new_tokens, do_sample=False, num_beams=1,
                               repetition_penalty=cfg.repetition_penalty)
    return time.perf_counter() - started


def job_seconds(cfg, run_dir: Path) -> float:
    from core.captions.taggers.vlm import run
    from core.jobs.protocol import JobContext

    for caption in Path(cfg.train_data_dir[0]).glob("*.txt"):
        caption.unlink()
    started = time.perf_counter()
    with JobContext(run_dir, echo=False) as ctx:
        result = run(cfg, ctx)
    seconds = time.perf_counter() - started
    assert result["written"] + result["unchanged"] == result["images"], result  # unchanged: an empty caption
    return seconds


def measure(args: argparse.Namespace) -> list[Row]:
    from core.captions.taggers.common import images_to_do
    from core.captions.taggers.vlm import load_vlm, model_inputs, prompt_text
    from core.config import VlmCaptionConfig
    from core.dataset.images import open_image

    with tempfile.TemporaryDirectory() as tmp, studio_home(Path(tmp) / "home"):
        model_dir = args.model
        if not model_dir:
            sys.path.insert(0, str(REPO / "tests"))
            from tinyvlm_llava import build_llava

            model_dir = str(build_llava(Path(tmp) / "model", args.hidden, args.layers, args.image_size))
        dataset = Path(args.dataset) if args.dataset else draw_images(Path(tmp) / "images", args.images)
        if args.dataset:  # the job writes captions: work on a copy
            dataset = Path(shutil.copytree(dataset, Path(tmp) / "images"))
        cfg = VlmCaptionConfig(train_data_dir=[str(dataset)], model_dir=model_dir, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, max_data_loader_n_workers=args.workers,
                               prompt_preset="detailed" if "florence" in model_dir.lower() else "medium")
        vlm = load_vlm(cfg.model_dir, cfg.dtype, cfg.quantization)
        paths = images_to_do(cfg)[0]
        prompt = prompt_text(vlm, cfg)
        batches = [model_inputs(vlm, prompt, [open_image(p, cfg.max_image_pixels) for p in paths[i:i + cfg.batch_size]])
                   for i in range(0, len(paths), cfg.batch_size)]
        bare, job = [], []
        for repeat in range(args.repeats):
            bare.append(bare_seconds(cfg, batches))
            job.append(job_seconds(cfg, Path(tmp) / f"run{repeat}"))
    images = len(paths)
    bare_rate, job_rate = images / min(bare), images / min(job)
    return [Row("VLM captioning job vs bare generate", job_rate / bare_rate, ">=", 0.9,
                "images/s of the vlm_caption job (decode, processor, generate, clean-up, write) / a bare "
                "model.generate loop on inputs the processor made beforehand",
                f"{job_rate:.2f} vs {bare_rate:.2f} images/s, {images} images, batch {cfg.batch_size}, "
                f"{cfg.max_new_tokens} new tokens, {vlm.family.name} on {vlm.device}, best of {args.repeats}")]


def main(argv=None) -> int:
    print_rows(measure(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
