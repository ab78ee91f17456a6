"""Exponential moving average (EMA) of the trained weights.

The average is kept in fp32 (also when the model trains in fp16/bf16), on the parameters' device or
on the CPU to save GPU memory. Its decay warms up as in diffusers' EMAModel and OneTrainer:
min(decay, (1 + n) / (10 + n)) at the n-th update, so short runs are not stuck near the initial
weights. It is registered with accelerate, so a saved training state resumes it exactly.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def ema_decay_at(decay: float, num_updates: int) -> float:
    """The decay used by update number `num_updates` (0-based)."""
    return min(decay, (1 + num_updates) / (10 + num_updates))


class EMA:
    def __init__(self, params, decay: float, update_every: int = 1, on_cpu: bool = False):
        self.params = list(params)
        self.decay, self.update_every = decay, update_every
        self.shadow = [p.detach().to("cpu" if on_cpu else p.device, torch.float32, copy=True)
                       for p in self.params]
        self.num_updates = 0

    @torch.no_grad()
    def step(self, global_step: int) -> None:
        """Update the average after optimizer step `global_step` (every `update_every` steps)."""
        if global_step % self.update_every:
            return
        weight = 1 - ema_decay_at(self.decay, self.num_updates)
        for average, param in zip(self.shadow, self.params):
            average.lerp_(param.detach().to(average.device, torch.float32), weight)
        self.num_updates += 1

    @contextmanager
    def swapped_in(self):
        """The parameters hold the average inside the block; their own values (kept on the CPU
        meanwhile) come back exactly afterwards."""
        with torch.no_grad():
            backup = [p.detach().to("cpu", copy=True) for p in self.params]
            for param, average in zip(self.params, self.shadow):
                param.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(self.params, backup):
                    param.copy_(saved)

    def state_dict(self) -> dict:
        return {"shadow": [t.cpu() for t in self.shadow], "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(state['shadow'])} tensors, this run trains "
                             f"{len(self.shadow)}: resume with the same trained parts and blocks")
        with torch.no_grad():
            for average, saved in zip(self.shadow, state["shadow"]):
                average.copy_(saved)
        self.num_updates = int(state["num_updates"])
