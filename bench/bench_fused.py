"""Fused backward pass: the peak memory of a fused Adafactor step against a normal one, same U-Net.

A U-Net with SDXL's widths (320, 640, 1280 channels, 2048-wide cross-attention, the text-time embedding)
but fewer layers (436M weights: a few minutes on a 2-core CPU) is built with random weights in a fresh process per
variant. After the model, the optimizer and the batch are in memory, the process's resident-memory
high-water mark is reset (Linux) and `--steps` training steps run as the trainer runs them (max_grad_norm 1):
- normal: forward, loss, backward, clip_grad_norm_ over all weights, Adafactor step, zero_grad;
- fused: forward, loss, backward with core/train/fused.py's hooks (each weight clipped on its own, stepped
  and its gradient freed in the backward).
Growth = peak RSS - RSS with the model loaded. Ratio = fused growth / normal growth (target <= 0.75: the
normal step holds a gradient as large as the weights, which fusing removes; what is left is the
activations, which grow with the latent size and batch). The time per step of both is printed too.

    python bench/bench_fused.py [--latent 16] [--batch-size 1] [--steps 1] [--layers-per-block 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row, bench_env, current_rss, peak_rss, print_rows, reset_peak_rss  # noqa: E402

QUICK = ["--channels", "64,128,256", "--cross-attention-dim", "256", "--latent", "8"]
SDXL_CHANNELS = "320,640,1280"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", default=SDXL_CHANNELS, help="the U-Net's block widths (SDXL: 320,640,1280)")
    parser.add_argument("--cross-attention-dim", type=int, default=2048, help="text embedding width (SDXL: 2048)")
    parser.add_argument("--layers-per-block", type=int, default=1, help="resnets per block (SDXL: 2)")
    parser.add_argument("--transformer-layers", type=int, default=1, help="transformer depth per block "
                        "(SDXL: 1, 2, 10 by block)")
    parser.add_argument("--latent", type=int, default=16, help="latent side (an image 8x as large)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1, help="training steps measured in each variant (the first "
                        "already holds all a step holds: the optimizer state is made in it)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", choices=("normal", "fused"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_unet(args):
    """SDXL's U-Net layout at `args`' depth, random weights (made on the meta device, then filled: a normal
    initialisation of ~0.4 billion weights takes longer than the steps measured)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    channels = tuple(int(c) for c in args.channels.split(","))
    heads = tuple(max(1, c // 64) for c in channels)
    with init_empty_weights():
        unet = UNet2DConditionModel(
            sample_size=args.latent, block_out_channels=channels, layers_per_block=args.layers_per_block,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=args.transformer_layers, cross_attention_dim=args.cross_attention_dim,
            attention_head_dim=heads, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=256 * 6 + 1280)
    unet.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0, 0.02, generator=generator)
    return unet.train()


def child(args) -> None:
    """In a fresh process: the model, optimizer and batch, then the steps; prints the memory as JSON."""
    import torch

    from core.train.fused import fuse_into_backward
    from core.train.optimizers import make_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = build_unet(args)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = make_optimizer("Adafactor", params, 1e-5, {"relative_step": False, "scale_parameter": False,
                                                            "warmup_init": False})
    fused = args.child == "fused"
    if fused:
        fuse_into_backward(optimizer, 1.0)
    b, side = args.batch_size, args.latent
    latents, text = torch.randn(b, 4, side, side), torch.randn(b, 77, args.cross_attention_dim)
    added = {"text_embeds": torch.randn(b, 1280), "time_ids": torch.tensor([[8.0 * side] * 6] * b)}
    timesteps = torch.randint(0, 1000, (b,))
    model_rss = current_rss()
    exact = reset_peak_rss()
    started = time.perf_counter()
    for _ in range(args.steps):
        prediction = unet(latents, timesteps, text, added_cond_kwargs=added).sample
        loss = torch.nn.functional.mse_loss(prediction, latents)
        loss.backward()
        if not fused:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del prediction, loss
    seconds = (time.perf_counter() - started) / args.steps
    print(json.dumps({"model_rss": model_rss, "peak": peak_rss(), "exact": exact, "seconds": seconds,
                      "weights": sum(p.numel() for p in params)}))


def run_variant(variant: str, args) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--channels", args.channels,
               "--cross-attention-dim", str(args.cross_attention_dim), "--layers-per-block",
               str(args.layers_per_block), "--transformer-layers", str(args.transformer_layers),
               "--latent", str(args.latent), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--threads", str(args.threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=bench_env()).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(args) -> list[Row]:
    gib = 2**30
    result = {variant: run_variant(variant, args) for variant in ("normal", "fused")}
    growth = {variant: r["peak"] - r["model_rss"] for variant, r in result.items()}
    for variant, r in result.items():
        print(f"{variant:6s} step: model loaded {r['model_rss'] / gib:.2f} GiB RSS, peak {r['peak'] / gib:.2f} GiB "
              f"(+{growth[variant] / gib:.2f} GiB), {r['seconds']:.1f} s/step")
    weights, saved = result["normal"]["weights"], growth["normal"] - growth["fused"]
    since = "" if all(r["exact"] for r in result.values()) else "; peak since process start (no clear_refs)"
    narrow = "" if args.channels == SDXL_CHANNELS else f" (channels {args.channels})"
    return [Row(f"fused backward pass vs normal Adafactor step{narrow}", growth["fused"] / growth["normal"], "<=",
                0.75, "peak RSS above the loaded model of a fused_backward_pass step / of a normal Adafactor step, "
                "same U-Net of SDXL width on the CPU",
                f"+{growth['fused'] / gib:.2f} vs +{growth['normal'] / gib:.2f} GiB above the "
                f"{result['normal']['model_rss'] / gib:.2f} GiB loaded: {saved / gib:.2f} GiB saved, the gradients "
                f"of the {weights / 1e6:.0f}M fp32 weights being {weights * 4 / gib:.2f} GiB; latent "
                f"{args.latent}x{args.latent}, batch {args.batch_size}, {args.steps} step(s){since}")]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    print_rows(measure(args))


if __name__ == "__main__":
    main()
