"""Memory estimate vs measured, on the CPU: real runs of the `train` job (each in a fresh process) on the tiny demo
model and on an SD 1.x-width U-Net (channels 320/640/1280, one layer per block, random weights) at 64 px, batch 1
and 4, gradient checkpointing off and on, AdamW and AdamW8bit, and the SD 1.x-width U-Net at 256 px, batch 4
(where the forward and backward pass makes the peak). Each run estimates itself at its start
(core/estimate/run_watch.py) and measures over its training steps the peak of torch's CPU allocator above the
loaded model (every tensor, the kernels' own buffers included: the CPU's counterpart of CUDA's allocated peak,
which the estimate predicts; traced through the profiler, STUDIO_TRACE_CPU_ALLOCATOR=1) and, in a second run
without the trace (the profiler's own buffers are resident memory too), its peak resident memory (RSS, which also
holds what is not a tensor). The row's ratio is |allocated / estimate - 1| (target <=
0.2: within +-20%); the RSS and its error are beside it.

    python bench/bench_estimate.py [--steps 3] [--only demo|sd1-width] [--cases N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, Row, bench_env, print_rows  # noqa: E402
from core.estimate.measured import TRACE_CPU_ALLOCATOR  # noqa: E402

QUICK = ["--steps", "2", "--only", "demo"]
TARGET = 0.2
# (model, batch, gradient checkpointing, optimizer)
# (model, batch, gradient checkpointing, optimizer, pixels): at 64 px the peak is the optimizer step; the 256 px
# rows' is the forward/backward pass, so they check the activations measured under fake tensors
CASES = [("demo", 1, False, "AdamW", 64), ("demo", 4, False, "AdamW", 64), ("demo", 4, True, "AdamW", 64),
         ("demo", 1, False, "AdamW8bit", 64),
         ("sd1-width", 1, False, "AdamW", 64), ("sd1-width", 4, False, "AdamW", 64),
         ("sd1-width", 1, True, "AdamW", 64), ("sd1-width", 4, True, "AdamW", 64),
         ("sd1-width", 1, False, "AdamW8bit", 64),
         ("sd1-width", 4, False, "AdamW", 256), ("sd1-width", 4, True, "AdamW", 256)]
SD1_WIDTH = {"block_out_channels": [320, 640, 1280], "layers_per_block": 1, "attention_head_dim": 8,
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps of each run")
    parser.add_argument("--only", choices=("demo", "sd1-width"), help="one model only")
    parser.add_argument("--cases", type=int, default=0, help="the first N cases only (0: all)")
    parser.add_argument("--pixels", type=int, help="the cases of this resolution only")
    parser.add_argument("--optimizer", help="the cases of this optimizer only")
    return parser.parse_args(argv)


def sd1_width_model(demo: Path, out: Path) -> Path:
    """The demo pipeline with its U-Net replaced by an SD 1.x-width one (random weights; the demo's small text
    encoder and VAE, so the U-Net is what the run's memory is about)."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    shutil.copytree(demo, out)
    config = {**UNet2DConditionModel.load_config(demo / "unet"), **SD1_WIDTH}
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(config).save_pretrained(out / "unet")
    return out


def run_case(model: Path, dataset: Path, work: Path, batch: int, checkpointing: bool, optimizer: str, pixels: int,
             steps: int, trace: bool) -> dict:
    run_dir = work / (f"run-{batch}-{checkpointing}-{optimizer}-{pixels}-{model.parent.name}-"
                      f"{'traced' if trace else 'rss'}")
    sets = {"pretrained_model_name_or_path": str(model), "train_data_dir": [str(dataset)],
            "output_dir": str(run_dir.with_name(run_dir.name + "-out")), "max_resolution": f"{pixels},{pixels}",
            "min_bucket_reso": pixels, "max_bucket_reso": pixels, "train_batch_size": batch,
            "gradient_checkpointing": checkpointing, "optimizer_type": optimizer, "max_train_steps": steps,
            "save_precision": "fp32", "learning_rate": 1e-5, "cache_latents": True}
    command = [sys.executable, "-m", "core", "train", "--run-dir", str(run_dir)]
    for key, value in sets.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    env = {**bench_env(), "OMP_NUM_THREADS": "1", TRACE_CPU_ALLOCATOR: "1" if trace else "0"}
    subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "result.json").read_text())["measured"]


def measure(args) -> list[Row]:
    from core.dataset.demo import build_demo

    rows = []
    cases = [c for c in CASES
             if (not args.only or c[0] == args.only) and (not args.optimizer or c[3] == args.optimizer)
             and (not args.pixels or c[4] == args.pixels)]
    cases = cases[:args.cases] if args.cases else cases
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as tmp:
        work = Path(tmp)
        os.environ["STUDIO_HOME"] = str(work / "home")  # the runs' measured shapes go to a table of their own
        build_demo(work / "demo", "sd1", num_images=8)
        models = {"demo": work / "demo" / "model"}
        if any(c[0] == "sd1-width" for c in cases):
            models["sd1-width"] = sd1_width_model(models["demo"], work / "sd1-width" / "model")
        for name, batch, checkpointing, optimizer, pixels in cases:
            traced, untraced = (run_case(models[name], work / "demo" / "dataset", work, batch, checkpointing,
                                         optimizer, pixels, args.steps, trace) for trace in (True, False))
            estimate, allocated, rss = (traced["estimated"], traced["peak_allocated_above_model"],
                                        untraced["peak_rss_above_model"])
            label = f"{name} {pixels}px batch {batch}, checkpointing {'on' if checkpointing else 'off'}, {optimizer}"
            figures = (f"estimate {estimate / 2**20:.0f} MiB, allocated {allocated / 2**20:.0f} MiB "
                       f"({traced['allocated_error_percent']:+.1f}%), RSS {rss / 2**20:.0f} MiB "
                       f"({untraced['error_percent']:+.1f}%)")
            print(f"{label}: {figures}", flush=True)
            rows.append(Row(f"estimate: {label}", abs(allocated / estimate - 1), "<=", TARGET,
                            "|measured peak of torch's CPU allocator above the loaded model / estimate - 1| of a "
                            "real CPU run", figures))
    return rows


def main(argv=None) -> None:
    print_rows(measure(parse_args(argv)))


if __name__ == "__main__":
    main()
