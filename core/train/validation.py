"""Held-out validation: the split, a fixed validation loss, and plateau tracking for auto_stop.

The validation loss is comparable between evaluations: two of them differ only because the
weights do. Each (image, timestep) pair gets its noise from a generator seeded by (seed, image
index, timestep) alone; the latents are fixed (the cache file's, or, for images trained from
pixels, the seeded posterior sample the cache job would store for them); captions are processed
without shuffle or dropout; the mean is summed exactly (`math.fsum`), so batching does not change
it. The global RNG state is saved and restored around the evaluation, so validating never changes
the noise, timesteps or dropout of the training run.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch

from core.dataset.buckets import training_image
from core.dataset.images import DEFAULT_MAX_PIXELS
from core.dataset.latents import encode_batch, load_cached, noise_seed, pixels_of
from core.models.text import process_caption
from core.train.data import Example, size_conditioning
from core.train.start_checks import split_problem
from core.train.step import predict, training_target


def split_validation(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation): round(fraction * n) images held out (at least 1, at most n - 1).

    Which images are held out depends on the seed and the image paths only, not on the list's
    order; both lists keep the input order. Repeats play no part (an Example is one image)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must be at least 0 and below 1, not {fraction}")
    if problem := split_problem(len(examples), fraction):
        raise ValueError(problem)
    if fraction == 0:
        return list(examples), []
    n = len(examples)
    held_out = min(max(round(fraction * n), 1), n - 1)
    order = sorted(range(n), key=lambda i: str(examples[i].image))
    random.Random(seed).shuffle(order)
    validation = set(order[:held_out])
    return ([e for i, e in enumerate(examples) if i not in validation],
            [e for i, e in enumerate(examples) if i in validation])


def validation_loss(examples: Sequence[Example], unet, encode: Callable[[list[str]], tuple], model, *,
                    timesteps: Sequence[int] = (100, 300, 500, 700, 900), seed: int = 0, batch_size: int = 1,
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    caption_prefix: str = "", caption_suffix: str = "",
                    max_image_pixels: int = DEFAULT_MAX_PIXELS) -> float:
    """Mean squared error of the U-Net's prediction (eps or v) over every (image, timestep) pair.

    `model` is the SDModel (its VAE on `device` in `dtype` for images without a cache file, its
    noise scheduler, its scaling factor); `unet` the unwrapped U-Net being trained (put in eval
    mode for the evaluation, then back); `encode(captions)` gives the text-encoder states and the pooled state
    (None but for SDXL), as core.train.conditioning.PromptEncoder does."""
    if not examples:
        raise ValueError("no validation images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    scheduler = model.noise_scheduler
    num_train_timesteps = scheduler.config.num_train_timesteps
    if not timesteps or any(not 0 <= t < num_train_timesteps for t in timesteps):
        raise ValueError(f"validation timesteps must be between 0 and {num_train_timesteps - 1}, "
                         f"got {list(timesteps)}")
    device = torch.device(device)
    captions = [process_caption(e.caption, False, 0, random.Random(0), caption_prefix=caption_prefix,
                                caption_suffix=caption_suffix) for e in examples]
    losses: list[float] = []
    was_training = unet.training
    unet.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for indices in validation_batches(examples, batch_size):
                latents = validation_latents([examples[i] for i in indices], model, device, dtype,
                                             max_image_pixels)
                hidden, pooled = encode([captions[i] for i in indices])
                time_ids = None if pooled is None else torch.stack(
                    [size_conditioning(examples[i].assignment, False) for i in indices])
                for t in timesteps:
                    noise = torch.stack([pair_noise(latents.shape[1:], seed, i, t) for i in indices]).to(device)
                    steps = torch.full((len(indices),), t, dtype=torch.long, device=device)
                    prediction = predict(unet, scheduler.add_noise(latents, noise, steps), steps, hidden, pooled,
                                         time_ids)
                    target = training_target(scheduler, latents, noise, steps)
                    losses += (prediction.float() - target.float()).square().mean(dim=(1, 2, 3)).tolist()
    finally:
        unet.train(was_training)
    return math.fsum(losses) / len(losses)


def validation_batches(examples: Sequence[Example], batch_size: int) -> list[list[int]]:
    """Indices of the examples in batches of at most `batch_size`, one bucket (and source) per batch."""
    groups: dict[tuple, list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault((tuple(example.bucket), example.cache is None), []).append(i)
    return [group[j:j + batch_size] for group in groups.values() for j in range(0, len(group), batch_size)]


def validation_latents(examples: list[Example], model, device: torch.device, dtype: torch.dtype,
                       max_image_pixels: int) -> torch.Tensor:
    """Scaled float32 latents on `device`: the cache files' unflipped latents, or the images encoded
    now with the posterior sample the cache job would store (its per-image seeded noise)."""
    if examples[0].cache is not None:
        latents = torch.stack([load_cached(e.cache)["latents"] for e in examples])
    else:
        pixels = torch.stack([pixels_of(training_image(e.assignment, max_image_pixels)) for e in examples])
        latents = encode_batch(model.vae, pixels, [noise_seed(e.image, False) for e in examples], device, dtype)
    return latents.to(device).float() * model.scaling_factor


def pair_noise(shape: Sequence[int], seed: int, index: int, timestep: int) -> torch.Tensor:
    """The fixed Gaussian noise of one (image, timestep) pair, drawn on the CPU."""
    pair_seed = random.Random(f"{seed}:{index}:{timestep}").getrandbits(63)
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(pair_seed))


class Plateau:
    """Reduce-on-plateau and early stopping on the validation loss, one decision per evaluation.

    `update(value)` says "improved" (value < best - min_delta: a new best), "wait" (no improvement
    for fewer than `patience` evaluations), "reduce" (patience used up: scale the lr by `factor`;
    the count starts again), or "stop" (patience used up after `max_reductions` reductions)."""

    def __init__(self, patience: int, min_delta: float, max_reductions: int, factor: float = 0.1):
        if patience < 1 or min_delta < 0 or max_reductions < 0 or not 0 < factor < 1:
            raise ValueError(f"plateau settings out of range: patience {patience} (>= 1), min_delta "
                             f"{min_delta} (>= 0), max_reductions {max_reductions} (>= 0), factor {factor} "
                             "(between 0 and 1)")
        self.patience, self.min_delta, self.max_reductions, self.factor = patience, min_delta, max_reductions, factor
        self._best: float | None = None
        self._reductions = 0
        self._bad_evaluations = 0

    @property
    def best(self) -> float | None:
        """The lowest value seen (None before the first finite one)."""
        return self._best

    @property
    def reductions(self) -> int:
        return self._reductions

    @property
    def bad_evaluations(self) -> int:
        """Evaluations without improvement since the last improvement or reduction."""
        return self._bad_evaluations

    def update(self, value: float) -> str:
        """The decision for a new validation value (a NaN or infinite one never improves)."""
        if math.isfinite(value) and (self._best is None or value < self._best - self.min_delta):
            self._best, self._bad_evaluations = float(value), 0
            return "improved"
        self._bad_evaluations += 1
        if self._bad_evaluations < self.patience:
            return "wait"
        if self._reductions >= self.max_reductions:
            return "stop"
        self._reductions, self._bad_evaluations = self._reductions + 1, 0
        return "reduce"

    def state_dict(self) -> dict:
        return {"best": self._best, "reductions": self._reductions, "bad_evaluations": self._bad_evaluations}

    def load_state_dict(self, state: dict) -> None:
        best = state["best"]
        self._best = None if best is None else float(best)
        self._reductions, self._bad_evaluations = int(state["reductions"]), int(state["bad_evaluations"])


def scale_learning_rates(optimizer: torch.optim.Optimizer, lr_scheduler, factor: float) -> None:
    """Multiply every param group's lr by `factor` for the rest of the run.

    A LambdaLR recomputes the lr from its `base_lrs` at each step, so those are scaled too (and the
    groups' `initial_lr`, from which a fresh scheduler takes them); both are in the saved state."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if hasattr(lr_scheduler, "base_lrs"):
        lr_scheduler.base_lrs = [lr * factor for lr in lr_scheduler.base_lrs]
