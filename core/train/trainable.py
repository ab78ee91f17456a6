"""What a run trains: the U-Net (all of it or chosen block groups), the text encoder, or both.

Frozen parameters get `requires_grad=False` and stay out of the optimizer, so they cannot change.
With clip_skip N > 1 the last N - 1 text-encoder layers never reach the loss: they stay frozen
too (under DDP a trained parameter without a gradient would stall the reduction).
"""
from __future__ import annotations

import torch

from core.train.schedules import steps_of

UNET_BLOCK_GROUPS = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}


def unet_parameters(unet: torch.nn.Module, blocks: list[str]) -> list[torch.nn.Parameter]:
    """The U-Net parameters to train: all of them when `blocks` is empty, else those of the named
    groups (down/mid/up); the input/output layers and the time embedding then stay frozen."""
    unknown = sorted(set(blocks) - set(UNET_BLOCK_GROUPS))
    if unknown:
        raise ValueError(f"unknown U-Net block group(s) {unknown}; expected some of {list(UNET_BLOCK_GROUPS)}")
    prefixes = tuple(UNET_BLOCK_GROUPS[b] for b in blocks)
    return [p for name, p in unet.named_parameters() if not prefixes or name.startswith(prefixes)]


def text_encoder_parameters(text_encoder: torch.nn.Module, clip_skip: int) -> list[torch.nn.Parameter]:
    """The text-encoder parameters that reach the loss at this clip_skip (all but the skipped
    last layers; the final layer norm is applied after the skip, so it trains too)."""
    num_layers = len(text_encoder.encoder.layers)
    skipped = {f"encoder.layers.{i}." for i in range(num_layers - max(clip_skip - 1, 0), num_layers)}
    return [p for name, p in text_encoder.named_parameters() if not name.startswith(tuple(skipped))]


def set_trainable(model, train_unet: bool, train_text_encoder: bool, unet_blocks: list[str],
                  clip_skip: int) -> dict[str, list[torch.nn.Parameter]]:
    """Freeze everything, then unfreeze what is trained; returns the trained parameters by part
    ("unet", "text_encoder"; a part that is not trained is absent)."""
    for module in (model.unet, model.vae, model.text_encoder):
        module.requires_grad_(False)
    trained = {}
    if train_unet:
        trained["unet"] = unet_parameters(model.unet, unet_blocks)
    if train_text_encoder:
        trained["text_encoder"] = text_encoder_parameters(model.text_encoder, clip_skip)
    for params in trained.values():
        for p in params:
            p.requires_grad_(True)
    return trained


def param_groups(trained: dict[str, list[torch.nn.Parameter]], lr: float, lr_te: float) -> list[dict]:
    """Optimizer groups: the U-Net at `lr`, the text encoder at `lr_te` (U-Net first when both)."""
    rates = {"unet": lr, "text_encoder": lr_te}
    return [{"params": params, "lr": rates[part]} for part, params in trained.items()]


def text_encoder_stop_step(value: float, total_steps: int) -> int | None:
    """`stop_text_encoder_training`: the step after which the text encoder is frozen (a fraction
    of the run when below 1, else a number of steps); None when it trains to the end."""
    step = steps_of(value, total_steps)
    return step if 0 < step < total_steps else None



def add_lora_adapters(model, train_text_encoder: bool, rank: int, alpha: float, dropout: float, targets: str,
                      clip_skip: int) -> dict[str, list[torch.nn.Parameter]]:
    """LoRA mode: adapters on the U-Net (and the text encoder), everything else frozen; returns the
    adapter parameters by part (those of skipped text-encoder layers stay frozen, as above)."""
    from core.models.lora import add_lora

    add_lora(model.unet, model.text_encoder if train_text_encoder else None, rank, alpha, dropout, targets)
    trained = {"unet": [p for p in model.unet.parameters() if p.requires_grad]}
    if train_text_encoder:
        reached = {id(p) for p in text_encoder_parameters(model.text_encoder, clip_skip)}
        adapters = [p for p in model.text_encoder.parameters() if p.requires_grad]
        for p in adapters:
            p.requires_grad_(id(p) in reached)
        trained["text_encoder"] = [p for p in adapters if id(p) in reached]
    return trained
