"""Bytes an optimizer keeps per trained tensor, and the temporaries of its step, by the rules of the
implementations the trainer uses (core/train/optimizers.py):

- AdamW (torch): exp_avg and exp_avg_sq, 2 n in the weights' dtype; its foreach step (CUDA's default) makes one
  copy of sqrt(exp_avg_sq) of the whole group for a moment;
- AdamW8bit (bitsandbytes): 2 n bytes and one fp32 absmax per block of 256; tensors under 4096 elements keep
  2 n fp32; the step works in place on CUDA; on the CPU it makes ~5 fp32 copies of the tensor it steps
  (measured: 4 tensors of 16.8M elements, 130 MiB of state, 452 MiB of growth);
- Lion (bitsandbytes, 32-bit): n fp32; Lion8bit: n bytes and the absmax per 256 (small tensors n fp32);
- SGDNesterov (torch): the momentum, n in the weights' dtype;
- Adafactor (transformers): for 2-D and larger tensors the factored second moment, fp32 row (shape[:-1]) and
  column (shape[:-2] + shape[-1:]) sums; 1-D: n fp32; exp_avg (n fp32) only with beta1 set; its step works
  on one tensor at a time in fp32 (~3 copies of the largest);
- Prodigy (prodigyopt): s, p0, exp_avg, exp_avg_sq, 4 n in the weights' dtype; ~2 copies of the largest tensor
  in its step.
"""
from __future__ import annotations

import math

BNB_BLOCK = 256         # bitsandbytes' blockwise quantisation: one fp32 absmax per block
BNB_MIN_8BIT = 4096     # bitsandbytes keeps tensors smaller than this in 32-bit states


def _numel(shape) -> int:
    return math.prod(shape) if shape else 1


def _eight_bit(n: int, states: int) -> int:
    if n < BNB_MIN_8BIT:
        return states * n * 4
    return states * (n + math.ceil(n / BNB_BLOCK) * 4)


def _adafactor(shape, args: dict) -> int:
    n = _numel(shape)
    if len(shape) >= 2:
        second = (_numel(shape[:-1]) + _numel(tuple(shape[:-2]) + tuple(shape[-1:]))) * 4
    else:
        second = n * 4
    return second + (n * 4 if args.get("beta1") is not None else 0)


def state_bytes(name: str, shapes: list[tuple], itemsize: int, args: dict | None = None) -> int:
    """The optimizer `name`'s state for trained tensors of `shapes` whose weights are `itemsize` bytes wide."""
    args = args or {}
    total = 0
    for shape in shapes:
        n = _numel(shape)
        total += {
            "AdamW": lambda: 2 * n * itemsize,
            "AdamW8bit": lambda: _eight_bit(n, 2),
            "Lion": lambda: n * 4,
            "Lion8bit": lambda: _eight_bit(n, 1),
            "SGDNesterov": lambda: n * itemsize if args.get("momentum", 0.9) else 0,
            "Adafactor": lambda: _adafactor(shape, args),
            "Prodigy": lambda: 4 * n * itemsize,
        }[name]()
    return total


BNB_CPU_STEP_COPIES = 5  # bitsandbytes' 8-bit step on the CPU: ~5 fp32 copies of the tensor stepped (measured)


def step_temporaries(name: str, shapes: list[tuple], itemsize: int, one_at_a_time: bool = False,
                     cpu: bool = False) -> int:
    """Memory the optimizer's step allocates for a moment, above its state and the gradients. `one_at_a_time`:
    AdamW steps tensor by tensor (no foreach: on the CPU, or inside a fused backward pass); `cpu`: the step runs
    on the CPU, where bitsandbytes' 8-bit optimizers dequantize each tensor's state to fp32 (its CUDA kernel
    works in place)."""
    if not shapes:
        return 0
    largest = max(_numel(s) for s in shapes)
    if name in ("AdamW8bit", "Lion8bit") and cpu:
        return BNB_CPU_STEP_COPIES * largest * 4
    if name == "AdamW" and not one_at_a_time:  # foreach: the sqrt of the whole group's exp_avg_sq
        return sum(_numel(s) for s in shapes) * itemsize
    if name == "AdamW":  # each tensor's sqrt, then its / bias correction, while the last tensor's denom lives on
        sizes = [_numel(s) for s in shapes]
        return max(previous + 2 * size for previous, size in zip([0, *sizes], sizes)) * itemsize
    if name == "Adafactor":
        return 3 * largest * 4
    if name == "Prodigy":
        return 2 * largest * itemsize
    return 0
