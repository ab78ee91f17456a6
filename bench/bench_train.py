"""Trainer benchmark: what the trainer costs on top of the bare training computation.

In one run, on the same model, batch size and cached latents:
1. the `train` job's time per step (from its progress events, after warm-up steps);
2. a bare loop: noise, timesteps, text encoding, U-Net forward, loss, backward, optimizer step,
   over the same batches held in memory.
Prints the ratio (target <= 1.05) and the peak memory per step (CUDA max allocated on a GPU,
the process's RSS high-water mark on a CPU).

With no arguments it builds the tiny demo model (CPU, about a minute). For a real model:
    python bench/bench_train.py --model /path/sd15.safetensors --dataset /path/images \
        --resolution 512,512 --batch-size 4 --steps 60 --mixed-precision bf16
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import Row, print_rows  # noqa: E402
from core.config import TrainConfig, validate  # noqa: E402
from core.jobs.protocol import JobContext  # noqa: E402
from core.train import loop  # noqa: E402
from core.train import step as step_fn  # noqa: E402
from core.train.conditioning import PromptEncoder  # noqa: E402

QUICK = ["--steps", "10", "--warmup", "3"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="model path (default: build the tiny demo)")
    parser.add_argument("--dataset", default="", help="dataset folder (default: the demo dataset)")
    parser.add_argument("--resolution", default="256,256")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    return parser.parse_args(argv)


def peak_memory_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trainer_seconds_per_step(cfg: TrainConfig, run_dir: Path, warmup: int) -> float:
    with JobContext(run_dir, echo=False) as ctx:
        loop.run(cfg, ctx)
    progress = ctx.run.read_events("progress")
    times = {}  # step -> time of the training phase: the last run of progress events (the cache's come first)
    for event in reversed(progress):
        if event["total"] != progress[-1]["total"] or (times and event["step"] >= min(times)):
            break
        times[event["step"]] = event["time"]
    last = max(times)
    return (times[last] - times[warmup]) / (last - warmup)


def bare_seconds_per_step(cfg: TrainConfig, steps: int, warmup: int) -> float:
    """The same computation with nothing around it: the epoch's batches held in memory, plain PyTorch."""
    from core.models.sd import load_sd_model
    from core.train.data import build_examples, make_dataloader

    with JobContext(Path(cfg.output_dir).parent / "bare-run", echo=False) as ctx:
        batches = list(make_dataloader(build_examples(cfg, ctx), cfg))
    model = load_sd_model(cfg.pretrained_model_name_or_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = step_fn.weight_dtype(cfg.mixed_precision)
    model.unet.to(device).train()
    model.vae.to(device, dtype=dtype)
    model.text_encoder.to(device, dtype=dtype)
    prompts = PromptEncoder(model, cfg, device)
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=cfg.learning_rate)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    for step in range(steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = step_fn.loss_of_batch(batches[step % len(batches)], model, model.unet, prompts, cfg, dtype, device)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (steps - warmup)


def measure(args) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        model, dataset = args.model, args.dataset
        if not model:
            from core.dataset.demo import build_demo

            build_demo(work / "demo", arch="sd1", num_images=16, seed=0)
            model, dataset = str(work / "demo" / "model"), dataset or str(work / "demo" / "dataset")
        side = max(map(int, args.resolution.split(",")))
        cfg = validate(TrainConfig, {
            "pretrained_model_name_or_path": model, "train_data_dir": [dataset], "output_dir": str(work / "out"),
            "max_resolution": args.resolution, "min_bucket_reso": 64, "max_bucket_reso": max(1024, side),
            "bucket_reso_steps": 64, "train_batch_size": args.batch_size, "max_train_steps": args.steps,
            "learning_rate": 1e-5, "mixed_precision": args.mixed_precision, "latents_dir": str(work / "latents"),
            "save_precision": "fp16"}, "bench")
        trainer = trainer_seconds_per_step(cfg, work / "run", args.warmup)
        peak = peak_memory_mib()
        bare = bare_seconds_per_step(cfg, args.steps, args.warmup)
    memory = "CUDA allocated" if torch.cuda.is_available() else "process RSS"
    print(f"trainer: {1000 * trainer:.1f} ms/step, bare loop: {1000 * bare:.1f} ms/step")
    print(f"peak memory during training: {peak:.0f} MiB ({memory})")
    return [Row("trainer vs bare loop", trainer / bare, "<=", 1.05,
                "train job's time per step / a bare forward-backward-optimizer loop on the same batches",
                f"{1000 * trainer:.1f} vs {1000 * bare:.1f} ms/step, batch {args.batch_size} at {args.resolution}, "
                f"{args.steps - args.warmup} timed steps; peak {peak:.0f} MiB {memory}")]


if __name__ == "__main__":
    print_rows(measure(parse_args()))
