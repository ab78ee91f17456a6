"""What a run trains: the U-Net (all of it or chosen block groups), the text encoder(s), or both.

Frozen parameters get `requires_grad=False` and stay out of the optimizer, so they cannot change.
With clip_skip N > 1 the last N - 1 text-encoder layers never reach the loss: they stay frozen
too (under DDP a trained parameter without a gradient would stall the reduction).
"""
from __future__ import annotations

import torch

from core.models.lora import add_lora
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


def text_encoder_parameters(text_encoder: torch.nn.Module, clip_skip: int, final_norm: bool = True
                            ) -> list[torch.nn.Parameter]:
    """The text-encoder parameters that reach the loss at this clip_skip: all but the skipped last
    layers, and the final layer norm when it is applied (after the skip, as kohya)."""
    root = getattr(text_encoder, "text_model", text_encoder)  # CLIPTextModelWithProjection keeps the level
    prefix = "text_model." if root is not text_encoder else ""
    num_layers = len(root.encoder.layers)
    skipped = [f"{prefix}encoder.layers.{i}." for i in range(num_layers - max(clip_skip - 1, 0), num_layers)]
    if not final_norm:
        skipped.append(f"{prefix}final_layer_norm.")
    return [p for name, p in text_encoder.named_parameters() if not name.startswith(tuple(skipped))]


def reached_parameters(model, part: str, clip_skip: int) -> list[torch.nn.Parameter]:
    """A text encoder's parameters that reach the loss. SDXL: the first encoder's penultimate layer
    without the final norm; the second's pooled output goes through all of it."""
    text_encoder = getattr(model, part)
    if model.arch != "sdxl":
        return text_encoder_parameters(text_encoder, clip_skip)
    if part == "text_encoder":
        return text_encoder_parameters(text_encoder, 2, final_norm=False)
    return list(text_encoder.parameters())


def text_encoder_rates(model, cfg) -> dict[str, float]:
    """Learning rate of each text encoder the run trains (see TrainConfig.text_encoder_rates: empty
    is the rate above it, 0 keeps that encoder frozen)."""
    return cfg.text_encoder_rates(model.arch)


def text_encoder_parts(model) -> list[str]:
    """The text encoders of the model: one, or SDXL's two."""
    return ["text_encoder", "text_encoder_2"] if model.arch == "sdxl" else ["text_encoder"]


def set_trainable(model, train_unet: bool, text_encoders: list[str], unet_blocks: list[str],
                  clip_skip: int) -> dict[str, list[torch.nn.Parameter]]:
    """Freeze everything, then unfreeze what is trained (the U-Net or its blocks, the named text
    encoders); returns the trained parameters by part ("unet", "text_encoder", "text_encoder_2";
    a part that is not trained is absent)."""
    for part in ("unet", "vae", *text_encoder_parts(model)):
        getattr(model, part).requires_grad_(False)
    trained = {}
    if train_unet:
        trained["unet"] = unet_parameters(model.unet, unet_blocks)
    for part in text_encoders:
        trained[part] = reached_parameters(model, part, clip_skip)
    for params in trained.values():
        for p in params:
            p.requires_grad_(True)
    return trained


def param_groups(trained: dict[str, list[torch.nn.Parameter]], lr: float, te_rates: dict[str, float],
                 unet_blocks: dict[int, tuple[int, float]] | None = None) -> list[dict]:
    """Optimizer groups: the U-Net at `lr`, each text encoder at its rate (U-Net first). `unet_blocks`
    (block-weighted LoRA: U-Net parameter id -> (block, lr weight)): one U-Net group per block at lr x weight."""
    groups = []
    for part, params in trained.items():
        if part == "unet" and unet_blocks:
            by_block: dict[tuple[int, float], list[torch.nn.Parameter]] = {}
            for p in params:
                by_block.setdefault(unet_blocks[id(p)], []).append(p)
            groups += [{"params": ps, "lr": lr * weight, "lr_weight": weight}
                       for (_, weight), ps in sorted(by_block.items())]
        else:
            groups.append({"params": params, "lr": lr if part == "unet" else te_rates[part]})
    return groups


def text_encoder_stop_step(value: float, total_steps: int) -> int | None:
    """`stop_text_encoder_training`: the step after which the text encoder is frozen (a fraction
    of the run when below 1, else a number of steps); None when it trains to the end."""
    step = steps_of(value, total_steps)
    return step if 0 < step < total_steps else None


def add_lora_adapters(model, text_encoders: list[str], rank: int, alpha: float, dropout: float, targets: str,
                      clip_skip: int, ranks: dict | None = None) -> dict[str, list[torch.nn.Parameter]]:
    """LoRA mode: adapters on the U-Net (and the named text encoders), everything else frozen;
    returns the adapter parameters by part (those of layers that never reach the loss stay frozen).
    `ranks`: modules' own (rank, alpha), as add_lora takes them (block_lr.block_ranks)."""
    add_lora({part: getattr(model, part) for part in ("unet", *text_encoders)}, rank, alpha, dropout, targets, ranks)
    trained = {"unet": [p for p in model.unet.parameters() if p.requires_grad]}
    for part in text_encoders:
        reached = {id(p) for p in reached_parameters(model, part, clip_skip)}
        adapters = [p for p in getattr(model, part).parameters() if p.requires_grad]
        for p in adapters:
            p.requires_grad_(id(p) in reached)
        trained[part] = [p for p in adapters if id(p) in reached]
    return trained


def lora_parts(model) -> dict[str, torch.nn.Module]:
    """The parts of a LoRA run that carry adapters (saved in the LoRA file)."""
    return {part: getattr(model, part) for part in ("unet", *text_encoder_parts(model))
            if hasattr(getattr(model, part), "peft_config")}
