"""The trainer's "LoRA" section: the adapter trained with train_lora."""
from __future__ import annotations

from typing import Literal

from core.config.conditions import when
from core.config.schema import JobConfig, param

LORA = when("train_lora", True)


class LoraSettings(JobConfig):
    """Rank, alpha, dropout, target layers and file format of the LoRA (all ignored without train_lora)."""
    network_dim: int = param(16, "LoRA rank (network_dim): the adapter's size.", label="LoRA rank", group="LoRA",
                             applies=LORA, ge=1, le=1024)
    network_alpha: float = param(8.0, "LoRA alpha (the update is scaled by alpha / rank).", label="LoRA alpha",
                                 group="LoRA", applies=LORA, gt=0)
    network_dropout: float = param(0.0, "Dropout inside the LoRA layers.", label="LoRA dropout", group="LoRA",
                                   advanced=True, applies=LORA, ge=0, lt=1)
    lora_targets: Literal["attention", "attention_mlp", "all_linear_conv"] = param(
        "attention", "Layers that get an adapter: attention only; attention and MLP; every linear and conv layer "
        "(LoCon-like).", label="LoRA layers", group="LoRA", applies=LORA)
    lora_save_format: Literal["kohya", "diffusers"] = param(
        "kohya", "kohya: loads in AUTOMATIC1111 and ComfyUI; diffusers: for load_lora_weights. Always one "
        ".safetensors file.", label="LoRA file format", group="LoRA", applies=LORA)
