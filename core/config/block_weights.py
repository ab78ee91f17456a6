"""The syntax of sd-scripts' block-weighted LoRA settings (down_lr_weight / mid_lr_weight / up_lr_weight,
block_dims and the like) and the U-Net block layouts they count; core/models/lora_blocks.py maps them
onto a U-Net's modules (the block numbering is described there)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockLayout:
    down: int  # input blocks (down_lr_weight values)
    mid: int  # middle block parts (mid_lr_weight values)
    up: int  # output blocks (up_lr_weight values)
    outer: int  # blocks before the input blocks and after the output blocks (SDXL: embeddings, out)

    @property
    def total(self) -> int:
        """Values of block_dims / block_alphas."""
        return self.outer + self.down + self.mid + self.up + self.outer


SD_LAYOUT = BlockLayout(12, 1, 12, 0)
SDXL_LAYOUT = BlockLayout(9, 3, 9, 1)
LR_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")
LR_WEIGHT_PARTS = {"down_lr_weight": "down", "mid_lr_weight": "mid", "up_lr_weight": "up"}
BLOCK_VALUES = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
BLOCK_SETTINGS = (*LR_WEIGHT_PARTS, "block_lr_zero_threshold", *BLOCK_VALUES)  # sd-scripts' network_args


def layout_of(arch: str) -> BlockLayout:
    """The block layout of an architecture (sd1, sd2, sdxl)."""
    return SDXL_LAYOUT if arch == "sdxl" else SD_LAYOUT


def block_labels(part: str, arch: str) -> list[str]:
    """Names of the blocks of `part` (down / mid / up) as block-weight tools show them: IN00, M00, OUT00."""
    count = getattr(layout_of(arch), part)
    return [f"{dict(down='IN', mid='M', up='OUT')[part]}{i:02d}" for i in range(count)]


def preset_weights(text: str, count: int) -> list[float]:
    """sd-scripts' named weights over `count` blocks, shallow to deep for down (`cosine`: 1 -> 0, `sine`:
    0 -> 1, `linear`, `reverse_linear`, `zeros`), with `+x` added to each (`sine+0.5`)."""
    name, plus, offset = text.strip().partition("+")
    try:
        base = float(offset) if plus else 0.0
    except ValueError:
        raise ValueError(f"{text!r}: the number after + ({offset!r}) is not a number") from None
    steps = [i / (count - 1) if count > 1 else 0.0 for i in range(count)]
    curves = {"sine": [math.sin(math.pi * s / 2) for s in steps], "linear": steps, "zeros": [0.0] * count}
    curves["cosine"] = curves["sine"][::-1]
    curves["reverse_linear"] = steps[::-1]
    if name not in curves:
        raise ValueError(f"{text!r}: expected comma-separated numbers or one of {', '.join(LR_PRESETS)} "
                         "(optionally with +number)")
    return [w + base for w in curves[name]]


def parse_lr_weight(text: str, count: int) -> list[float] | None:
    """A down/mid/up_lr_weight value as `count` weights (None when empty): comma-separated numbers (an
    empty item is 0; too many are cut, too few filled with 1, as sd-scripts does) or a preset name."""
    text = text.strip()
    if not text:
        return None
    items = text.split(",")
    if len(items) == 1 and not is_number(items[0]):
        return preset_weights(text, count)
    try:
        weights = [float(item) if item.strip() else 0.0 for item in items]
    except ValueError:
        raise ValueError(f"{text!r}: expected comma-separated numbers or one of {', '.join(LR_PRESETS)}") from None
    return (weights + [1.0] * count)[:count]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def block_lr_weights(arch: str, down: str, mid: str, up: str, zero_threshold: float = 0.0) -> list[float] | None:
    """The learning-rate weight of each block (None when none of down/mid/up is given); a weight not above
    `zero_threshold` is 0 (the block is left out of training). ValueError naming the setting when one
    does not parse."""
    layout = layout_of(arch)
    parsed = {}
    for name, text in (("down_lr_weight", down), ("mid_lr_weight", mid), ("up_lr_weight", up)):
        try:
            parsed[name] = parse_lr_weight(text, getattr(layout, LR_WEIGHT_PARTS[name]))
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    if all(weights is None for weights in parsed.values()):
        return None
    flat = [1.0] * layout.outer
    for name, weights in parsed.items():
        count = getattr(layout, LR_WEIGHT_PARTS[name])
        flat += [w if w > zero_threshold else 0.0 for w in weights] if weights is not None else [1.0] * count
    return flat + [1.0] * layout.outer


def parse_block_values(name: str, text: str, arch: str | None, cast=float) -> list | None:
    """A block_dims-like value (one number per block) as numbers; None when empty. `arch` None: any
    layout's count is accepted. ValueError naming the setting and the count wanted."""
    text = text.strip()
    if not text:
        return None
    try:
        values = [cast(item) for item in text.split(",")]
    except ValueError:
        kind = "whole numbers" if cast is int else "numbers"
        raise ValueError(f"{name}: expected comma-separated {kind}, got {text!r}") from None
    if any(v < 0 for v in values):
        raise ValueError(f"{name}: values must not be negative")
    counts = {layout_of(arch).total} if arch else {SD_LAYOUT.total, SDXL_LAYOUT.total}
    if len(values) not in counts:
        wanted = (f"{layout_of(arch).total} values for {arch}" if arch else
                  f"{SD_LAYOUT.total} values (SD 1.x/2.x) or {SDXL_LAYOUT.total} (SDXL)")
        raise ValueError(f"{name}: one value per U-Net block: {wanted}, got {len(values)}")
    return values
