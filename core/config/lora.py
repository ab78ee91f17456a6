"""The trainer's "LoRA" section: the adapter trained with train_lora."""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from core.config.block_weights import BLOCK_VALUES, SD_LAYOUT, parse_block_values, parse_lr_weight
from core.config.conditions import when
from core.config.schema import JobConfig, param

LORA = when("train_lora", True)
PEFT_LORA = (LORA, when("network_module", "networks.lora"))  # not a LyCORIS network (core/config/lycoris.py)


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
        "(LoCon-like).", label="LoRA layers", group="LoRA", applies=PEFT_LORA)
    lora_save_format: Literal["kohya", "diffusers"] = param(
        "kohya", "kohya: loads in AUTOMATIC1111 and ComfyUI; diffusers: for load_lora_weights. Always one "
        ".safetensors file.", label="LoRA file format", group="LoRA", applies=PEFT_LORA)
    down_lr_weight: str = param(
        "", "Learning-rate weight of each U-Net input (down) block, shallow to deep: 12 comma-separated numbers "
        "(SDXL: 9; fewer are filled with 1), or cosine, sine, linear, reverse_linear, zeros with an optional "
        "+number (sine+0.5). Empty: 1 for every block.", label="Down-block lr weights", group="LoRA",
        advanced=True, applies=PEFT_LORA, widget="block_weights")
    mid_lr_weight: str = param(
        "", "Learning-rate weight of the U-Net middle block (SDXL: 3 numbers, one per part). Empty: 1.",
        label="Mid-block lr weight", group="LoRA", advanced=True, applies=PEFT_LORA, widget="block_weights")
    up_lr_weight: str = param(
        "", "Learning-rate weight of each U-Net output (up) block, deep to shallow: 12 numbers (SDXL: 9) or a "
        "named curve as for the down blocks. Empty: 1 for every block.", label="Up-block lr weights",
        group="LoRA", advanced=True, applies=PEFT_LORA, widget="block_weights")
    block_lr_zero_threshold: float = param(
        0.0, "A block whose lr weight is not above this gets no adapter: it is not trained at all.",
        label="Block lr zero threshold", group="LoRA", advanced=True, applies=PEFT_LORA, ge=0)
    block_dims: str = param(
        "", "LoRA rank of each U-Net block: 25 comma-separated whole numbers (SDXL: 23), in sd-scripts' block "
        "order (input blocks, middle, output blocks); 0 leaves a block without adapters. Empty: the LoRA rank.",
        label="Block ranks", group="LoRA", advanced=True, applies=PEFT_LORA)
    block_alphas: str = param(
        "", "LoRA alpha of each U-Net block, 25 numbers (SDXL: 23) as block_dims. Empty: the LoRA alpha.",
        label="Block alphas", group="LoRA", advanced=True, applies=PEFT_LORA)
    conv_block_dims: str = param(
        "", "Rank of the 3x3 conv layers of each U-Net block (with LoRA layers all_linear_conv), 25 whole "
        "numbers (SDXL: 23). Empty: the LoRA rank.", label="Conv block ranks", group="LoRA", advanced=True,
        applies=PEFT_LORA)
    conv_block_alphas: str = param(
        "", "Alpha of the 3x3 conv layers of each U-Net block, with conv_block_dims. Empty: the LoRA alpha.",
        label="Conv block alphas", group="LoRA", advanced=True, applies=PEFT_LORA)

    @field_validator("down_lr_weight", "mid_lr_weight", "up_lr_weight")
    @classmethod
    def _lr_weight(cls, value: str) -> str:
        parse_lr_weight(value, SD_LAYOUT.down)  # the syntax; the count depends on the model (start checks)
        return value

    @field_validator(*BLOCK_VALUES)
    @classmethod
    def _block_values(cls, value: str, info) -> str:
        parse_block_values(info.field_name, value, None, int if "dims" in info.field_name else float)
        return value
