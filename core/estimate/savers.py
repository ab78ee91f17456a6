"""Settings that make a run need less memory, each with its estimated saving: the changes of form fields that
the GUI applies in one click and the command line prints as --set options.

Each saver is tried on the settings as they are: one that does not apply (already on, or refused by the
trainer's settings checks, such as cache_text_encoder_outputs with a trained text encoder) is left out.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.config import ConfigError, TrainConfig
from core.estimate.budget import Estimate, estimate
from core.estimate.skeleton import ModelShape, estimate_config


@dataclass
class Saver:
    name: str           # what it does, in a few words
    changes: dict       # field -> new value
    saving: int         # bytes less at the peak
    peak: int           # the estimated peak with it


def candidates(cfg: TrainConfig) -> list[tuple[str, dict]]:
    """(name, changes) of the savers worth trying for `cfg`."""
    found = [("gradient checkpointing", {"gradient_checkpointing": True}),
             ("cache latents", {"cache_latents": True}),
             ("cache text-encoder outputs", {"cache_text_encoder_outputs": True})]
    eight_bit = {"AdamW": "AdamW8bit", "Lion": "Lion8bit"}.get(cfg.optimizer_type)
    if eight_bit:
        found.append((f"8-bit optimizer ({eight_bit})", {"optimizer_type": eight_bit, "optimizer_args": []}))
    if not cfg.train_lora:
        found.append(("Adafactor with fused backward pass",
                      {"optimizer_type": "Adafactor", "optimizer_args": [], "fused_backward_pass": True,
                       "gradient_accumulation_steps": 1,
                       "mixed_precision": "bf16" if cfg.mixed_precision == "fp16" else cfg.mixed_precision,
                       "full_fp16": False}))
    if cfg.train_batch_size > 1:
        found.append((f"batch 1 with gradient accumulation x{cfg.train_batch_size * cfg.gradient_accumulation_steps}",
                      {"train_batch_size": 1,
                       "gradient_accumulation_steps": cfg.train_batch_size * cfg.gradient_accumulation_steps}))
    if cfg.mixed_precision == "no":
        found.append(("bf16 mixed precision", {"mixed_precision": "bf16"}))
    if not cfg.train_lora and not (cfg.full_fp16 or cfg.full_bf16):
        found.append(("full bf16 weights", {"mixed_precision": "bf16", "full_bf16": True, "full_fp16": False}))
    if cfg.use_ema and not cfg.ema_on_cpu:
        found.append(("EMA on the CPU", {"ema_on_cpu": True}))
    if not cfg.train_lora:
        found.append(("LoRA instead of a full fine-tune", {"train_lora": True, "unet_blocks": []}))
    return [(name, changes) for name, changes in found
            if any(getattr(cfg, key) != value for key, value in changes.items())]


def savers(values: dict, current: Estimate, shape: ModelShape, allow_measure: bool = False,
           in_child: bool = False) -> list[Saver]:
    """The savers that lower the peak of the settings `values` (estimated as `current`), largest first."""
    base = estimate_config(values)
    found = []
    for name, changes in candidates(base):
        try:
            cfg = estimate_config({**values, **changes})
        except ConfigError:
            continue  # refused by the settings checks: not a saver here
        peak = estimate(cfg, allow_measure=allow_measure, shape=shape, in_child=in_child).peak
        if peak < current.peak:
            found.append(Saver(name, changes, current.peak - peak, peak))
    return sorted(found, key=lambda s: -s.saving)
