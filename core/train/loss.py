"""Loss variants and per-sample loss weights for training (kohya sd-scripts behaviour).

elementwise_loss gives the per-element loss (l2 / huber / smooth_l1 / l1) before reduction;
apply_masked_loss weights it per latent pixel by the samples' masks (masked_loss); reduce_loss takes the
mean over the non-batch dims, multiplies per-sample weights (dataset loss weights x min_snr_weight x
debiased_weight) and takes the batch mean.
"""
from __future__ import annotations

import math
from typing import get_args

import torch

from core.config.choices import HuberSchedule
from core.dataset.masks import mask_to_size

LOSS_TYPES = ("l2", "huber", "smooth_l1", "l1")
HUBER_SCHEDULES = get_args(HuberSchedule)


def _alphas_cumprod_at(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = noise_scheduler.alphas_cumprod.float().cpu()
    return alphas_cumprod[timesteps.long().cpu()].to(timesteps.device)


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep, float32 (B,)."""
    alphas_cumprod = _alphas_cumprod_at(noise_scheduler, timesteps)
    return (alphas_cumprod.sqrt() / (1.0 - alphas_cumprod).sqrt()) ** 2


def min_snr_weight(snr: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma weights (arXiv:2303.09556) as kohya apply_snr_weight.

    eps: min(snr, gamma) / snr; v-prediction: min(snr, gamma) / (snr + 1).
    """
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return (clipped / (snr + 1) if v_prediction else clipped / snr).float()


def debiased_weight(snr: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """Debiased estimation weights as kohya: snr clamped to <= 1000, then 1/sqrt(snr) (eps)
    or 1/(snr + 1) (v-prediction)."""
    clipped = torch.minimum(snr, torch.full_like(snr, 1000.0))
    return (1 / (clipped + 1) if v_prediction else 1 / torch.sqrt(clipped)).float()


def huber_c_for(timesteps: torch.Tensor, noise_scheduler, huber_c: float, schedule: str,
                huber_scale: float = 1.0) -> torch.Tensor:
    """Per-sample huber threshold c (B,) as kohya get_huber_threshold_if_needed.

    constant: huber_c * scale; exponential: scale * exp(-alpha t), alpha = -ln(huber_c) / T
    (1 at t=0, huber_c at t=T); snr: (1 - huber_c) / (1 + sigma_t)**2 + huber_c with
    sigma_t = sqrt((1 - alpha_bar) / alpha_bar) (huber_scale not applied, as kohya).
    """
    if schedule == "constant":
        return torch.full((timesteps.shape[0],), huber_c * huber_scale, device=timesteps.device)
    if schedule == "exponential":
        alpha = -math.log(huber_c) / noise_scheduler.config.num_train_timesteps
        return torch.exp(-alpha * timesteps.float()) * huber_scale
    if schedule == "snr":
        alphas_cumprod = _alphas_cumprod_at(noise_scheduler, timesteps)
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    raise ValueError(f"unknown huber schedule {schedule!r}; expected one of {HUBER_SCHEDULES}")


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str,
                     huber_c: torch.Tensor | float | None = None) -> torch.Tensor:
    """Per-element loss (same shape as pred), kohya conditional_loss with reduction="none".

    l2: (p - t)^2; l1: |p - t|; huber: 2c(sqrt((p - t)^2 + c^2) - c);
    smooth_l1: 2(sqrt((p - t)^2 + c^2) - c). c is a float or a per-sample (B,) tensor.
    """
    if loss_type == "l2":
        return (pred - target) ** 2
    if loss_type == "l1":
        return (pred - target).abs()
    if loss_type not in ("huber", "smooth_l1"):
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    if huber_c is None:
        raise ValueError(f"loss_type {loss_type!r} needs huber_c")
    c = torch.as_tensor(huber_c, dtype=pred.dtype, device=pred.device)
    if c.ndim == 1:
        c = c.view(-1, *([1] * (pred.ndim - 1)))
    root = torch.sqrt((pred - target) ** 2 + c ** 2) - c
    return 2 * c * root if loss_type == "huber" else 2 * root


def apply_masked_loss(loss: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The per-element loss (B, C, h, w) times the masks (B, 1, H, W) in [0, 1], reduced to (h, w) by area
    interpolation and shared by all channels: sd-scripts' apply_masked_loss. The mean that follows
    (reduce_loss) runs over every element, masked or not, as in sd-scripts: a sample whose mask keeps half
    of it weighs about half."""
    return loss * mask_to_size(masks.to(loss.device, loss.dtype), loss.shape[-2:])


def reduce_loss(loss: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the non-batch dims, times per-sample weights (B,) when given, then the batch mean."""
    per_sample = loss.mean(dim=tuple(range(1, loss.ndim))) if loss.ndim > 1 else loss
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
