"""One training step's loss, read top to bottom: latents, noise, timesteps, noisy latents, text
states (and for SDXL the pooled state and size conditioning), U-Net prediction, target (eps or v), loss, per-sample weights. Each option is a small pure
function from core.train.noise / core.train.loss."""
from __future__ import annotations

import torch

from core.config import TrainConfig
from core.train.loss import (
    apply_masked_loss,
    debiased_weight,
    elementwise_loss,
    huber_c_for,
    min_snr_weight,
    reduce_loss,
    snr,
)
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


def predict(unet, noisy_latents, timesteps, hidden_states, pooled=None, time_ids=None) -> torch.Tensor:
    """The U-Net's prediction; SDXL also gets the pooled text state and the size/crop conditioning
    (core.train.data.size_conditioning). Inputs go in the U-Net's dtype: fp32, or fp16/bf16 with
    full_fp16/full_bf16 or a frozen U-Net."""
    unet_dtype = next(unet.parameters()).dtype
    extra = {}
    if pooled is not None:
        if time_ids is None:
            raise ValueError("an SDXL U-Net needs the size and crop conditioning (time_ids) of each sample")
        extra["added_cond_kwargs"] = {"text_embeds": pooled.to(noisy_latents.device, unet_dtype),
                                      "time_ids": time_ids.to(noisy_latents.device, unet_dtype)}
    return unet(noisy_latents.to(unet_dtype), timesteps, hidden_states.to(unet_dtype), **extra).sample


def loss_of_batch(batch: dict, model, unet, encode, cfg: TrainConfig, dtype, device,
                  all_snr: torch.Tensor | None = None) -> torch.Tensor:
    """One training step's loss (the heart of the trainer). `encode(captions)` gives the text
    states and pooled state (core.train.conditioning.PromptEncoder); `all_snr`: SNR per timestep of the schedule
    before zero-terminal-SNR rescaling (kohya weights the loss with those)."""
    scheduler = model.noise_scheduler
    latents = batch_latents(batch, model, dtype, device)
    noise = torch.randn_like(latents)
    noise = offset_noise(noise, latents, cfg.noise_offset, cfg.noise_offset_random_strength)
    noise = pyramid_noise(noise, cfg.multires_noise_iterations, cfg.multires_noise_discount)
    timesteps = sample_timesteps(latents.shape[0], cfg.min_timestep, cfg.max_timestep, device)
    input_noise = perturbed_noise(noise, cfg.ip_noise_gamma, cfg.ip_noise_gamma_random_strength)
    noisy_latents = scheduler.add_noise(latents, input_noise, timesteps)
    hidden_states, pooled = encode(batch["captions"])
    prediction = predict(unet, noisy_latents, timesteps, hidden_states, pooled, batch.get("time_ids"))
    target = training_target(scheduler, latents, noise, timesteps)
    huber_c = huber_c_for(timesteps, scheduler, cfg.huber_c, cfg.huber_schedule) if cfg.loss_type != "l2" else None
    loss = elementwise_loss(prediction.float(), target.float(), cfg.loss_type, huber_c)
    if "masks" in batch:  # masked_loss: each latent pixel weighted by the image's mask
        loss = apply_masked_loss(loss, batch["masks"])
    return reduce_loss(loss, loss_weights(cfg, scheduler, timesteps, all_snr, batch.get("loss_weights")))


def loss_weights(cfg: TrainConfig, scheduler, timesteps, all_snr: torch.Tensor | None,
                 sample_weights: torch.Tensor | None = None) -> torch.Tensor | None:
    """Per-sample loss weights: the batch's own (prior_loss_weight for DreamBooth class images) times
    min-SNR and/or debiased estimation (None: equal weights)."""
    if not (cfg.min_snr_gamma or cfg.debiased_estimation_loss):
        return sample_weights
    snr_t = (all_snr if all_snr is not None else snr(scheduler, torch.arange(
        scheduler.config.num_train_timesteps)))[timesteps.cpu()].to(timesteps.device)
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    weights = torch.ones_like(snr_t) if sample_weights is None else sample_weights.to(snr_t)
    if cfg.min_snr_gamma:
        weights = weights * min_snr_weight(snr_t, cfg.min_snr_gamma, v_prediction)
    if cfg.debiased_estimation_loss:
        weights = weights * debiased_weight(snr_t, v_prediction)
    return weights
