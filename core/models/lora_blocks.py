"""Block-weighted LoRA, with sd-scripts' meaning (networks.lora's network_args): a learning-rate weight
per U-Net block (down_lr_weight / mid_lr_weight / up_lr_weight, block_lr_zero_threshold) and a rank
and alpha per block (block_dims / block_alphas, conv_block_dims / conv_block_alphas for 3x3 convs).

Blocks are those of the U-Net's original (LDM) layout, numbered as sd-scripts numbers them:
- SD 1.x / 2.x, 25 blocks: input_blocks.0-11 are 0-11, middle_block is 12, output_blocks.0-11 are
  13-24; down_lr_weight has 12 values (the input blocks), mid_lr_weight 1, up_lr_weight 12.
- SDXL, 23 blocks: the time and label embeddings are 0, input_blocks.0-8 are 1-9, middle_block.0-2
  are 10-12, output_blocks.0-8 are 13-21, out is 22; down_lr_weight and up_lr_weight have 9 values,
  mid_lr_weight 3. Blocks 0 and 22 carry no LoRA (weight 1).
block_dims and the other per-block lists have one value per block (25 or 23). input_blocks.0 (conv_in)
carries no LoRA either; its values are read and unused, as in sd-scripts.
"""
from __future__ import annotations

from torch import nn

from core.config.block_weights import BLOCK_VALUES, layout_of, parse_block_values
from core.models.ldm_convert import original_key, unet_prefix_map


def block_index(unet: nn.Module, module: str, arch: str) -> int:
    """The sd-scripts block number of a U-Net module (its diffusers name). ValueError for a module
    outside the input, middle and output blocks, or a U-Net with more blocks than its architecture's."""
    layout = layout_of(arch)
    original = original_key(unet_prefix_map(unet.config), module + ".weight")
    group, _, rest = (original or "").partition(".")
    number = int(rest.split(".", 1)[0]) if rest[:1].isdigit() else -1
    first = {"input_blocks": (layout.outer, layout.down),
             "middle_block": (layout.outer + layout.down, layout.mid),
             "output_blocks": (layout.outer + layout.down + layout.mid, layout.up)}.get(group)
    if first is None or number < 0:
        raise ValueError(f"U-Net module {module} is in no input, middle or output block")
    start, count = first
    if group == "middle_block" and count == 1:
        number = 0  # SD 1.x/2.x: the middle block is one block
    if number >= count:
        raise ValueError(f"U-Net module {module} is in {group}.{number}, past the {count} of {arch}")
    return start + number


def module_ranks(unet: nn.Module, names: list[str], arch: str, rank: int, alpha: float,
                 settings: dict[str, str], lr_weights: list[float] | None) -> dict[str, tuple[int, float]]:
    """(rank, alpha) of each adapted U-Net module `names`: block_dims / block_alphas for Linear and 1x1
    conv layers, conv_block_dims / conv_block_alphas for 3x3 convs (else `rank` / `alpha`); rank 0 for
    the modules of a block whose learning-rate weight is 0 (they get no adapter, as in sd-scripts).
    `settings`: the block_dims-like values by name (text, as in the config)."""
    values = {name: parse_block_values(name, settings.get(name, ""), arch, int if "dims" in name else float)
              for name in BLOCK_VALUES}
    ranks = {}
    for name in names:
        block = block_index(unet, name, arch)
        layer = unet.get_submodule(name)
        conv3 = isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1)
        dims, alphas = (values["conv_block_dims"], values["conv_block_alphas"]) if conv3 else \
            (values["block_dims"], values["block_alphas"])
        if conv3 and dims is None:  # as sd-scripts: conv_block_alphas only go with conv_block_dims
            alphas = None
        ranks[name] = (0 if lr_weights is not None and lr_weights[block] == 0 else dims[block] if dims else rank,
                       alphas[block] if alphas else alpha)
    return ranks


def parameter_blocks(unet: nn.Module, arch: str) -> list[tuple[nn.Parameter, int]]:
    """Each trained (requires_grad) parameter of the U-Net's adapters with the block of its module."""
    return [(p, block_index(unet, name.split(".lora_", 1)[0], arch)) for name, p in unet.named_parameters()
            if p.requires_grad]
