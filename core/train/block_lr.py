"""Block-weighted LoRA in a run (sd-scripts' down/mid/up_lr_weight, block_lr_zero_threshold, block_dims,
block_alphas, conv_block_dims, conv_block_alphas): the U-Net modules' own ranks, the optimizer's
learning rate per block, and the start checks that need the model's architecture.

As in sd-scripts they apply to LoRA only (full fine-tuning chooses whole block groups with unet_blocks)
and to the U-Net only; a block whose weight is 0 gets no adapter, so it cannot change."""
from __future__ import annotations

from core.config import TrainConfig
from core.config.block_weights import (
    BLOCK_SETTINGS,
    BLOCK_VALUES,
    LR_WEIGHT_PARTS,
    block_lr_weights,
    is_number,
    layout_of,
    parse_block_values,
)
from core.train.problems import Problem

WHAT = {"down": "input blocks", "mid": "middle-block parts", "up": "output blocks"}


def applies(cfg: TrainConfig) -> bool:
    """Block settings apply to our (peft) LoRA, not to full fine-tuning or a LyCORIS network."""
    return cfg.train_lora and cfg.network_module == "networks.lora"


def lr_weights(cfg: TrainConfig, arch: str) -> list[float] | None:
    """The learning-rate weight of each U-Net block (None without down/mid/up_lr_weight)."""
    return block_lr_weights(arch, cfg.down_lr_weight, cfg.mid_lr_weight, cfg.up_lr_weight,
                            cfg.block_lr_zero_threshold)


def block_ranks(model, cfg: TrainConfig) -> dict[str, dict[str, tuple[int, float]]] | None:
    """The U-Net modules' (rank, alpha) for add_lora's `ranks` (None without block settings)."""
    from core.models.lora import TARGETS, target_modules
    from core.models.lora_blocks import module_ranks

    weights = lr_weights(cfg, model.arch)
    settings = {name: getattr(cfg, name) for name in BLOCK_VALUES}
    if weights is None and not any(value.strip() for value in settings.values()):
        return None
    names = target_modules(model.unet, TARGETS[cfg.lora_targets]["unet"])
    return {"unet": module_ranks(model.unet, names, model.arch, cfg.network_dim, cfg.network_alpha, settings,
                                 weights)}


def unet_lr_weights(model, cfg: TrainConfig) -> dict[int, tuple[int, float]] | None:
    """id of each trained U-Net parameter -> (its block, the block's lr weight), for param_groups; None
    without lr weights or where they do not apply."""
    from core.models.lora_blocks import parameter_blocks

    weights = lr_weights(cfg, model.arch) if applies(cfg) else None
    if weights is None:
        return None
    return {id(p): (block, weights[block]) for p, block in parameter_blocks(model.unet, model.arch)}


def block_problems(cfg: TrainConfig, arch: str) -> list[Problem]:
    """The block settings that do not fit the model's architecture (Problems for the start checks)."""
    if not applies(cfg):
        given = [name for name in BLOCK_SETTINGS if getattr(cfg, name)]
        return [Problem(given[0], f"{', '.join(given)}: block settings apply to networks.lora only, not to a "
                        "LyCORIS network: ignored", "warning")] if cfg.train_lora and given else []
    problems, layout = [], layout_of(arch)
    for name, part in LR_WEIGHT_PARTS.items():
        text, count = getattr(cfg, name).strip(), getattr(layout, part)
        given = len(text.split(",")) if "," in text or is_number(text) else count
        if text and given != count:
            fate = f"the values after the {count}th are ignored" if given > count else "the missing ones are 1"
            problems.append(Problem(name, f"{given} value(s) given, but this {arch} U-Net has {count} {WHAT[part]}: "
                                    f"{fate}", "warning"))
    for name in BLOCK_VALUES:
        try:
            parse_block_values(name, getattr(cfg, name), arch, int if "dims" in name else float)
        except ValueError as err:
            problems.append(Problem(name, str(err).split(": ", 1)[1]))
    weights = lr_weights(cfg, arch)
    if weights is not None and not any(weights[layout.outer + 1:len(weights) - layout.outer]):  # + 1: conv_in
        problems.append(Problem("down_lr_weight", "every block's lr weight is 0 (or not above "
                                "block_lr_zero_threshold): nothing would be trained"))
    if cfg.conv_block_dims.strip() and cfg.lora_targets != "all_linear_conv":
        problems.append(Problem("conv_block_dims", "only LoRA layers all_linear_conv adapt 3x3 convs: "
                                "conv_block_dims is ignored", "warning"))
    return problems
