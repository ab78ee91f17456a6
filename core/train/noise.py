"""Noise, timesteps and the noise schedule for training (kohya sd-scripts behaviour).

Small pure functions the training loop calls, in this order for one batch:
offset_noise -> pyramid_noise -> sample_timesteps -> perturbed_noise (only for the noisy latents;
the target keeps the noise returned by the first two). apply_zero_terminal_snr is applied once to
the scheduler before training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, moved to `like`'s device/dtype."""
    gen_device = generator.device if generator is not None else like.device
    out = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return out.to(device=like.device, dtype=like.dtype)


def _rand(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One uniform [0, 1) number as a 1-element tensor on `like`'s device."""
    gen_device = generator.device if generator is not None else like.device
    return torch.rand(1, generator=generator, device=gen_device).to(like.device)


def offset_noise(noise: torch.Tensor, latents: torch.Tensor, noise_offset: float, random_strength: bool,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Add a per-sample, per-channel constant shift (crosslabs "offset noise"), as kohya.

    noise + offset * N(0, 1) of shape (B, C, 1, 1); with random_strength the offset is
    uniform in [0, noise_offset) for the whole batch. noise_offset 0/None returns noise unchanged.
    """
    if not noise_offset:
        return noise
    offset = _rand(latents, generator) * noise_offset if random_strength else noise_offset
    shift = _randn((latents.shape[0], latents.shape[1], 1, 1), latents, generator)
    return noise + offset * shift.to(noise.dtype)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Multi-resolution ("pyramid") noise as kohya's pyramid_noise_like.

    Adds upsampled lower-resolution noise, level i scaled by discount**i and shrunk by a random
    factor r in [2, 4) per level (r**i), stops at 1x1, then divides by the std of the whole batch.
    Does not modify `noise` in place. iterations 0/None returns noise unchanged.
    """
    if not iterations:
        return noise
    b, c, h, w = noise.shape
    out = noise  # never modified in place (out = out + ...)
    for i in range(iterations):
        r = float(_rand(noise, generator).item()) * 2 + 2
        hn, wn = max(1, int(h / (r ** i))), max(1, int(w / (r ** i)))
        low = _randn((b, c, hn, wn), noise, generator).float()
        up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).to(out.dtype)
        out = out + up * discount ** i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def perturbed_noise(noise: torch.Tensor, ip_noise_gamma: float, random_strength: bool,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Input perturbation (ip_noise_gamma): the noise to build the noisy latents from.

    noise + gamma * N(0, 1) (gamma uniform in [0, ip_noise_gamma) with random_strength). The
    training target must keep using the unperturbed `noise`. gamma 0/None returns noise.
    """
    if not ip_noise_gamma:
        return noise
    strength = _rand(noise, generator) * ip_noise_gamma if random_strength else ip_noise_gamma
    return noise + strength * _randn(noise.shape, noise, generator)


def sample_timesteps(batch: int, min_timestep: int, max_timestep: int, device,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform integer timesteps in [min_timestep, max_timestep) (max exclusive, as kohya), long."""
    if not 0 <= min_timestep < max_timestep:
        raise ValueError(f"need 0 <= min_timestep < max_timestep, got {min_timestep}, {max_timestep}")
    gen_device = generator.device if generator is not None else "cpu"
    t = torch.randint(min_timestep, max_timestep, (batch,), generator=generator, device=gen_device)
    return t.long().to(device)


def zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled so the last step has SNR 0 and the first keeps its alpha_bar
    (Lin et al. 2023, arXiv:2305.08891; same algorithm as kohya / diffusers rescale_zero_terminal_snr)."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas.double(), dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt ** 2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1.0 - alphas).to(betas.dtype)


def apply_zero_terminal_snr(noise_scheduler) -> None:
    """Rescale a DDPM-style scheduler in place: betas, alphas and alphas_cumprod (last == 0)."""
    betas = zero_terminal_snr_betas(noise_scheduler.betas)
    alphas = 1.0 - betas
    noise_scheduler.betas = betas
    noise_scheduler.alphas = alphas
    noise_scheduler.alphas_cumprod = torch.cumprod(alphas, dim=0)
