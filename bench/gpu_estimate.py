"""The memory estimate against CUDA, for the day a GPU is lent: SD 1.5 full fine-tune and LoRA at 512 px, SDXL
LoRA and SDXL full fine-tune (Adafactor, fused backward pass, full bf16) at 1024 px, random weights from the shipped
configs, a few real training steps (the trainer's own functions choose and place what is trained and build the
optimizer; latents and text embeddings are random, as from the caches). Prints estimate vs
torch.cuda.max_memory_allocated (and reserved) with the error, and exits cleanly without a GPU.

    python bench/gpu_estimate.py [--steps 3] [--only NAME]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COMMON = {"cache_latents": True, "gradient_checkpointing": True, "train_batch_size": 1}
CASES = {
    "sd15-full-512": {**COMMON, "max_resolution": "512,512", "optimizer_type": "AdamW8bit", "mixed_precision": "fp16"},
    "sd15-full-512-adamw": {**COMMON, "max_resolution": "512,512", "optimizer_type": "AdamW",
                            "mixed_precision": "bf16", "gradient_checkpointing": False, "train_batch_size": 2},
    "sd15-lora-512": {**COMMON, "max_resolution": "512,512", "train_lora": True, "network_dim": 32,
                      "lora_targets": "attention_mlp", "optimizer_type": "AdamW8bit", "mixed_precision": "fp16",
                      "train_batch_size": 2},
    "sdxl-lora-1024": {**COMMON, "max_resolution": "1024,1024", "train_lora": True, "network_dim": 32,
                       "lora_targets": "attention_mlp", "optimizer_type": "AdamW8bit", "mixed_precision": "bf16",
                       "cache_text_encoder_outputs": True, "no_half_vae": True},
    "sdxl-full-1024": {**COMMON, "max_resolution": "1024,1024", "optimizer_type": "Adafactor",
                       "fused_backward_pass": True, "mixed_precision": "bf16", "full_bf16": True,
                       "cache_text_encoder_outputs": True, "no_half_vae": True},
}


def run_case(values: dict, steps: int, device_name: str = "cuda") -> tuple[int, int, int]:
    """(estimated peak, measured peak allocated, measured peak reserved) of a few steps of these settings (on the
    CPU, a smoke run of the code: nothing is measured)."""
    import torch

    from core.estimate.budget import estimate, latent_size, unet_inputs
    from core.estimate.skeleton import estimate_config, mark_trained, meta_model, model_shape
    from core.train.fused import fuse_into_backward
    from core.train.loop import place_modules
    from core.train.optimizers import make_optimizer, parse_optimizer_args
    from core.train.step import weight_dtype
    from core.train.trainable import param_groups

    cfg = estimate_config(values)
    shape = model_shape(cfg)
    expected = estimate(cfg, shape=shape).peak
    device, dtype = torch.device(device_name), weight_dtype(cfg.mixed_precision)
    cuda = device.type == "cuda"
    model = meta_model(shape)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(model, part, None)
        if module is not None:
            module.to_empty(device="cpu")
            with torch.no_grad():
                for param in module.parameters():
                    param.normal_(0, 0.02)
    trained = mark_trained(model, cfg, on_meta=False)
    place_modules(model, cfg, trained, device, dtype)
    if cfg.cache_text_encoder_outputs:
        for part in ("text_encoder", "text_encoder_2"):
            if getattr(model, part, None) is not None:
                getattr(model, part).to("cpu")
    optimizer = make_optimizer(cfg.optimizer_type, param_groups(trained, cfg.learning_rate, {}), cfg.learning_rate,
                               parse_optimizer_args(cfg.optimizer_args))
    if cfg.fused_backward_pass:
        fuse_into_backward(optimizer, cfg.max_grad_norm)
    height, width = latent_size(cfg)
    inputs = unet_inputs(shape)
    batch = cfg.train_batch_size
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        latents = torch.randn(batch, 4, height, width, device=device, dtype=dtype)
        context = torch.randn(batch, 77, inputs["context_dim"], device=device, dtype=dtype)
        extra = {}
        if shape.arch == "sdxl":
            extra["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, inputs["text_embeds"], device=device,
                                                                     dtype=dtype),
                                          "time_ids": torch.randn(batch, 6, device=device, dtype=dtype)}
        with torch.autocast(device.type, dtype=dtype, enabled=cfg.mixed_precision != "no"):
            prediction = model.unet(latents, torch.randint(0, 1000, (batch,), device=device), context, **extra).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), torch.randn_like(prediction.float()))
        loss.backward()
        if not cfg.fused_backward_pass:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if not cuda:
        return expected, 0, 0
    torch.cuda.synchronize()
    return expected, torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", choices=sorted(CASES), action="append", default=[])
    parser.add_argument("--cpu-smoke", metavar="PX", type=int, default=0,
                        help="run the cases' code on the CPU at this resolution (a check of the script, no figures)")
    args = parser.parse_args(argv)
    import torch

    if args.cpu_smoke:
        for name in args.only or CASES:
            values = {**CASES[name], "max_resolution": f"{args.cpu_smoke},{args.cpu_smoke}", "min_bucket_reso": 64}
            print(f"{name}: estimate {run_case(values, args.steps, 'cpu')[0] / 2**30:.2f} GiB, ran on the CPU")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to compare (run this on a machine with an NVIDIA GPU)")
        return 0
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| case | estimate GiB | allocated GiB | error | reserved GiB | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.only or CASES:
        began = time.perf_counter()
        try:
            expected, allocated, reserved = run_case(CASES[name], args.steps)
        except torch.cuda.OutOfMemoryError as exc:
            print(f"| {name} | | out of memory | | | {str(exc).splitlines()[0][:80]} |", flush=True)
            torch.cuda.empty_cache()
            continue
        gib = 2**30
        print(f"| {name} | {expected / gib:.2f} | {allocated / gib:.2f} | {100 * (allocated / expected - 1):+.1f}% "
              f"| {reserved / gib:.2f} | {time.perf_counter() - began:.0f} |", flush=True)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
