"""Learning-rate schedules as one pure function of the step, and the torch scheduler built on it.

`lr_lambda` gives the multiplier of the base lr at an optimizer step. The curves match diffusers'
get_scheduler (linear warmup from 0, then the named decay), with two additions:
- `decay_steps` (kohya's `lr_decay_steps`, as in its warmup_stable_decay): for cosine, the lr
  holds at 1 after warmup and the cosine decay to 0 takes only the last `decay_steps` of the run.
- `drops` (`lr_drops`): percentages of the run at each of which the multiplier is divided by 10.
polynomial decays to 0 (diffusers decays to an absolute lr_end of 1e-7, a difference of at most
1e-7 / lr in the multiplier).
"""
from __future__ import annotations

import functools
import math
from typing import get_args

import torch
from torch.optim.lr_scheduler import LambdaLR

from core.config import TrainConfig
from core.config.choices import LrSchedulerName
from core.train.optimizers import is_self_scheduling

SCHEDULES = get_args(LrSchedulerName)


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int, int]:
    """(max optimizer steps, epochs) from max_train_epochs or max_train_steps."""
    updates_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps))
    if cfg.max_train_epochs:
        return cfg.max_train_epochs * updates_per_epoch, cfg.max_train_epochs
    return cfg.max_train_steps, math.ceil(cfg.max_train_steps / updates_per_epoch)


def steps_of(value: float, total_steps: int) -> int:
    """A step count given as steps, or as a fraction of the run when below 1 (lr_warmup_steps,
    stop_text_encoder_training)."""
    if value < 0:
        raise ValueError(f"a step count must be >= 0, got {value}")
    return round(value * total_steps) if value < 1 else int(value)


def _decay(name, step, total_steps, warmup_steps, num_cycles, power, decay_steps) -> float:
    if name in ("constant", "constant_with_warmup"):
        return 1.0
    if name == "cosine" and decay_steps > 0:
        start = max(warmup_steps, total_steps - decay_steps)
        progress = min(1.0, max(0.0, (step - start) / max(1, total_steps - start)))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if name == "linear":
        return max(0.0, 1.0 - progress)
    if name == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if name == "cosine_with_restarts":
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))
    if name == "polynomial":
        return max(0.0, 1.0 - progress) ** power
    raise ValueError(f"lr_scheduler {name!r} is unknown; choose one of {', '.join(SCHEDULES)}")


def lr_lambda(name: str, step: int, total_steps: int, warmup_steps: int, num_cycles: int = 1,
              power: float = 1.0, decay_steps: int = 0, drops=()) -> float:
    """The lr multiplier at optimizer step `step` (0-based) of a `total_steps` run."""
    if name not in SCHEDULES:
        raise ValueError(f"lr_scheduler {name!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    if name != "constant" and step < warmup_steps:
        multiplier = step / max(1, warmup_steps)
    else:
        multiplier = _decay(name, step, total_steps, warmup_steps, num_cycles, power, decay_steps)
    for percent in drops:
        if not 0 < percent < 100:
            raise ValueError(f"lr_drops are percentages of the run between 0 and 100, got {percent}")
        if step >= total_steps * percent // 100:
            multiplier /= 10
    return multiplier


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int,
                   num_cycles: int = 1, power: float = 1.0, decay_steps: int = 0, drops=()) -> LambdaLR:
    """A LambdaLR following `lr_lambda` (its state is saved and restored like any scheduler's).

    For Adafactor in relative-step mode, which sets its own lr, this is transformers'
    AdafactorSchedule instead (a constant proxy reporting the lr Adafactor uses), as kohya does.
    """
    if is_self_scheduling(optimizer):
        return adafactor_proxy(optimizer)
    lr_lambda(name, 0, total_steps, warmup_steps, num_cycles, power, decay_steps, drops)  # validate now
    return LambdaLR(optimizer, functools.partial(
        lr_lambda, name, total_steps=total_steps, warmup_steps=warmup_steps, num_cycles=num_cycles,
        power=power, decay_steps=decay_steps, drops=tuple(drops)))


def adafactor_proxy(optimizer: torch.optim.Optimizer) -> LambdaLR:
    """transformers' AdafactorSchedule, reporting the lr of each group whose first parameter has been
    updated (transformers' asks for one that holds a gradient now: with fused_backward_pass none outlives
    the backward, and it would report 0)."""
    from transformers.optimization import AdafactorSchedule

    class AdafactorProxy(AdafactorSchedule):
        def get_lr(self):
            opt = self.optimizer
            return [opt._get_lr(group, opt.state[group["params"][0]]) for group in opt.param_groups
                    if opt.state.get(group["params"][0])] or self.base_lrs

    return AdafactorProxy(optimizer)
