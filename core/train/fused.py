"""`fused_backward_pass` (kohya sd-scripts' name): the optimizer updates each parameter inside the backward
pass, as soon as that parameter's gradient is complete, and frees the gradient at once, so the gradients
of the whole model never exist together. For a full fine-tune this saves about the size of the trained
weights again (sd-scripts: SDXL in bf16 from about 24 GB to about 10 GB).

How: each trained parameter gets a post-accumulate-grad hook (torch's
`Tensor.register_post_accumulate_grad_hook`) that runs the optimizer's own `step` with its param groups
narrowed, for that call, to this one parameter in its group, then sets the gradient to None. The update
is transformers' Adafactor code, unchanged, so a fused run trains the same weights as an unfused one. The
optimizer object, its state and its param groups stay those accelerate prepared, saves and loads, so
training states, exact resume, the lr schedule (which writes the groups' "lr"; each call reads it) and
EMA work as without fusing.

What it cannot do, refused before the start (core/train/start_checks.py, `fused_backward_problems`):
- optimizers other than Adafactor (as sd-scripts: AdamW and the others have no per-parameter step here);
- gradient accumulation (a parameter would be updated by every micro-batch's part of the gradient);
- several processes, DeepSpeed or FSDP (they reduce or shard the gradients after the hooks have run);
- fp16 mixed precision (the gradient scaler unscales and checks all gradients at once before the step);
- LoRA (sd-scripts offers it for full fine-tuning only; a LoRA's gradients are small, nothing to save).

`max_grad_norm`: the norm of all gradients together is known only when the backward ends, after every
parameter has been updated. As sd-scripts does, each parameter's gradient is then clipped to max_grad_norm
on its own (`torch.nn.utils.clip_grad_norm_` of that parameter) before its update; 0 turns that off.
"""
from __future__ import annotations

import functools

import torch

FUSED_OPTIMIZERS = ("Adafactor",)


def fuse_into_backward(optimizer, max_grad_norm: float) -> list:
    """Hook every trainable parameter of `optimizer` (accelerate-wrapped or not) so the backward pass steps
    it; the loop then calls neither clip_grad_norm_ nor optimizer.step. Returns the hooks' handles."""
    raw = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    if type(raw).__name__ not in FUSED_OPTIMIZERS:
        raise ValueError(f"fused_backward_pass works with {', '.join(FUSED_OPTIMIZERS)} only, "
                         f"not {type(raw).__name__}")
    handles = []
    for index, group in enumerate(raw.param_groups):
        for param in group["params"]:
            if param.requires_grad:
                handles.append(param.register_post_accumulate_grad_hook(
                    functools.partial(_step_in_backward, raw, index, max_grad_norm)))
    return handles


def _step_in_backward(optimizer, group_index: int, max_grad_norm: float, param: torch.Tensor) -> None:
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(param, max_grad_norm)
    step_parameter(optimizer, param, group_index)
    param.grad = None


def step_parameter(optimizer: torch.optim.Optimizer, param: torch.Tensor, group_index: int) -> None:
    """`optimizer.step()` for `param` alone, with the settings of its group (read now: the lr schedule and
    a resumed state may have replaced the group since the hooks were set)."""
    groups = optimizer.param_groups
    optimizer.param_groups = [{**groups[group_index], "params": [param]}]
    try:
        optimizer.step()
    finally:
        optimizer.param_groups = groups
