"""One training step's loss, read top to bottom: latents, noise, timesteps, noisy latents, text
states, U-Net prediction, target (eps or v), loss, per-sample weights. Each option is a small pure
function from core.train.noise / core.train.loss."""
from __future__ import annotations

import torch

from core.config import TrainConfig
from core.train.loss import debiased_weight, elementwise_loss, huber_c_for, min_snr_weight, reduce_loss, snr
from core.train.noise import offset_noise, perturbed_noise, pyramid_noise, sample_timesteps


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """Dtype of the frozen modules (VAE, text encoder) under mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def training_target(noise_scheduler, latents, noise, timesteps) -> torch.Tensor:
    """What the U-Net learns to predict: the noise (eps) or the velocity (v-prediction)."""
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def batch_latents(batch: dict, model, dtype: torch.dtype, device) -> torch.Tensor:
    """Scaled latents of a batch: from the cache, or encoded now when caching is off."""
    if "latents" in batch:
        latents = batch["latents"].to(device)
    else:
        with torch.no_grad():
            pixels = batch["pixels"].to(device, dtype=dtype)
            latents = model.vae.encode(pixels).latent_dist.sample()
    return latents.float() * model.scaling_factor


def loss_of_batch(batch: dict, model, unet, encode, cfg: TrainConfig, dtype, device,
                  all_snr: torch.Tensor | None = None) -> torch.Tensor:
    """One training step's loss (the heart of the trainer). `encode(captions)` gives the text
    states (core.train.conditioning.PromptEncoder); `all_snr`: SNR per timestep of the schedule
    before zero-terminal-SNR rescaling (kohya weights the loss with those)."""
    scheduler = model.noise_scheduler
    latents = batch_latents(batch, model, dtype, device)
    noise = torch.randn_like(latents)
    noise = offset_noise(noise, latents, cfg.noise_offset, cfg.noise_offset_random_strength)
    noise = pyramid_noise(noise, cfg.multires_noise_iterations, cfg.multires_noise_discount)
    timesteps = sample_timesteps(latents.shape[0], cfg.min_timestep, cfg.max_timestep, device)
    input_noise = perturbed_noise(noise, cfg.ip_noise_gamma, cfg.ip_noise_gamma_random_strength)
    noisy_latents = scheduler.add_noise(latents, input_noise, timesteps)
    hidden_states = encode(batch["captions"])
    unet_dtype = next(unet.parameters()).dtype  # fp32, or fp16/bf16 with full_fp16/full_bf16 or a frozen U-Net
    prediction = unet(noisy_latents.to(unet_dtype), timesteps, hidden_states.to(unet_dtype)).sample
    target = training_target(scheduler, latents, noise, timesteps)
    huber_c = huber_c_for(timesteps, scheduler, cfg.huber_c, cfg.huber_schedule) if cfg.loss_type != "l2" else None
    loss = elementwise_loss(prediction.float(), target.float(), cfg.loss_type, huber_c)
    return reduce_loss(loss, loss_weights(cfg, scheduler, timesteps, all_snr))


def loss_weights(cfg: TrainConfig, scheduler, timesteps, all_snr: torch.Tensor | None) -> torch.Tensor | None:
    """Per-sample loss weights: min-SNR and/or debiased estimation (None: equal weights)."""
    if not (cfg.min_snr_gamma or cfg.debiased_estimation_loss):
        return None
    snr_t = (all_snr if all_snr is not None else snr(scheduler, torch.arange(
        scheduler.config.num_train_timesteps)))[timesteps.cpu()].to(timesteps.device)
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    weights = torch.ones_like(snr_t)
    if cfg.min_snr_gamma:
        weights = weights * min_snr_weight(snr_t, cfg.min_snr_gamma, v_prediction)
    if cfg.debiased_estimation_loss:
        weights = weights * debiased_weight(snr_t, v_prediction)
    return weights
