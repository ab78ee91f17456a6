"""Optimizers by name (the kohya sd-scripts names), their `optimizer_args`, and `scale_lr`.

`make_optimizer` builds one of OPTIMIZERS from parameters or param groups, a learning rate and
the user's `optimizer_args` (already parsed by `parse_optimizer_args`). An argument the optimizer
does not take is a ValueError that lists the ones it does, so a typo never passes silently.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import math
from typing import get_args

import torch

from core.config.choices import OptimizerName

OPTIMIZERS = get_args(OptimizerName)


def parse_optimizer_args(items: list[str]) -> dict:
    """["weight_decay=0.01", "betas=(0.9,0.99)", "decouple=True"] -> dict.

    Values are Python literals (numbers, True/False/None, tuples, lists); anything else is a string.
    """
    args = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.isidentifier() or not value:
            raise ValueError(f"optimizer_args: {item!r} is not key=value (e.g. weight_decay=0.01)")
        try:
            args[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            args[key] = value
    return args


def scaled_lr(lr: float, batch_size: int, accumulation: int) -> float:
    """`scale_lr`: lr x sqrt(batch size x gradient accumulation steps)."""
    return lr * math.sqrt(batch_size * accumulation)


def _optimizer_class(name: str):
    if name == "AdamW":
        return torch.optim.AdamW
    if name == "SGDNesterov":
        return torch.optim.SGD
    if name in ("AdamW8bit", "Lion", "Lion8bit"):
        import bitsandbytes as bnb
        return getattr(bnb.optim, name)  # kohya takes Lion from lion_pytorch; bnb's Lion is the same rule
    if name == "Adafactor":
        from transformers.optimization import Adafactor
        return Adafactor
    if name == "Prodigy":
        if importlib.util.find_spec("prodigyopt") is None:
            raise ValueError("optimizer_type Prodigy needs the prodigyopt package: pip install prodigyopt")
        from prodigyopt import Prodigy
        return Prodigy
    raise ValueError(f"optimizer_type {name!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")


def accepted_args(name: str) -> list[str]:
    """The optimizer_args keys `name` accepts (its constructor's keywords but params and lr)."""
    signature = inspect.signature(_optimizer_class(name).__init__)
    return [p for p in signature.parameters if p not in ("self", "params", "lr")
            and signature.parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                     inspect.Parameter.VAR_KEYWORD)]


def make_optimizer(name: str, params_or_groups, lr: float, args: dict) -> torch.optim.Optimizer:
    """The optimizer `name` over `params_or_groups` (groups may carry their own "lr").

    SGDNesterov is SGD with nesterov=True and momentum 0.9 unless given. Adafactor follows kohya:
    relative_step defaults to True (and warmup_init=True forces it); in that mode the optimizer
    picks its own step size, so `lr` and group lrs are ignored and the schedule must be
    `make_scheduler`'s Adafactor proxy. For Prodigy, use lr=1.0 (it estimates the step size).
    """
    cls = _optimizer_class(name)
    accepted = accepted_args(name)
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"optimizer_args {', '.join(unknown)} not accepted by {name}; "
                         f"it accepts: {', '.join(accepted)}")
    kwargs = dict(args)
    params = list(params_or_groups)
    if name == "SGDNesterov":
        kwargs.setdefault("momentum", 0.9)
        kwargs.setdefault("nesterov", True)
    if name == "Adafactor":
        kwargs["relative_step"] = sets_own_step_size(name, args)
        if kwargs["relative_step"]:
            lr = None
            params = [{k: v for k, v in g.items() if k != "lr"} if isinstance(g, dict) else g
                      for g in params]
    return cls(params, lr=lr, **kwargs)


def sets_own_step_size(name: str, args: dict) -> bool:
    """True for Adafactor in relative-step mode (its default, as kohya; warmup_init forces it): it
    picks its own step size, so learning rates and schedules do not apply."""
    return name == "Adafactor" and bool(args.get("relative_step", True) or args.get("warmup_init"))


def is_self_scheduling(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a built optimizer sets its own step size (see sets_own_step_size)."""
    return sets_own_step_size(type(optimizer).__name__, optimizer.defaults)
