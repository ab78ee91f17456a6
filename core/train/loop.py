"""The training loop (job `train`): SD 1.x / 2.x full fine-tuning of the U-Net.

Read top to bottom: load the model, prepare the data, then for each batch: latents, noise,
timesteps, noisy latents, U-Net prediction, target (eps or v), loss, backward, step. Saving,
stopping and resuming happen between optimizer steps. Multi-GPU and multi-node runs go through
`accelerate launch`; nothing here is distributed code of our own.
"""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import torch

from core.config import TrainConfig
from core.jobs import JobContext
from core.train import checkpoints
from core.train.checkpoints import Position
from core.train.loss import debiased_weight, elementwise_loss, huber_c_for, min_snr_weight, reduce_loss, snr
from core.train.noise import (apply_zero_terminal_snr, offset_noise, perturbed_noise, pyramid_noise,
                              sample_timesteps)
from core.train.optimizers import is_self_scheduling, make_optimizer, parse_optimizer_args, scaled_lr
from core.train.schedules import make_scheduler, warmup_steps_of


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


def loss_of_batch(batch: dict, model, unet, cfg: TrainConfig, dtype, device,
                  all_snr: torch.Tensor | None = None) -> torch.Tensor:
    """One training step's loss (the heart of the trainer). `all_snr`: SNR per timestep of the
    schedule before zero-terminal-SNR rescaling (kohya weights the loss with those)."""
    from core.text import encode_prompts, tokenize_prompts

    scheduler = model.noise_scheduler
    latents = batch_latents(batch, model, dtype, device)
    noise = torch.randn_like(latents)
    noise = offset_noise(noise, latents, cfg.noise_offset, cfg.noise_offset_random_strength)
    noise = pyramid_noise(noise, cfg.multires_noise_iterations, cfg.multires_noise_discount)
    timesteps = sample_timesteps(latents.shape[0], cfg.min_timestep, cfg.max_timestep, device)
    input_noise = perturbed_noise(noise, cfg.ip_noise_gamma, cfg.ip_noise_gamma_random_strength)
    noisy_latents = scheduler.add_noise(latents, input_noise, timesteps)
    with torch.no_grad():
        input_ids = tokenize_prompts(model.tokenizer, batch["captions"], cfg.max_token_length)
        hidden_states = encode_prompts(model.text_encoder, input_ids.to(device), cfg.clip_skip)
    prediction = unet(noisy_latents, timesteps, hidden_states.to(noisy_latents.dtype)).sample
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


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int, int]:
    """(max optimizer steps, epochs) from max_train_epochs or max_train_steps."""
    updates_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps))
    if cfg.max_train_epochs:
        return cfg.max_train_epochs * updates_per_epoch, cfg.max_train_epochs
    return cfg.max_train_steps, math.ceil(cfg.max_train_steps / updates_per_epoch)


def check_outputs(cfg: TrainConfig) -> None:
    """Refuse to overwrite a finished model of an earlier run (unless resuming it)."""
    final = checkpoints.model_path(cfg.output_dir, cfg.output_name, cfg.save_model_as)
    if final.exists() and not cfg.resume:
        raise ValueError(f"{final} exists already: choose another output_name or output_dir "
                         "(nothing is overwritten), or resume the run that made it")
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)


def run(cfg: TrainConfig, ctx: JobContext) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from core.models.sd import load_sd_model, save_sd_model
    from core.train.data import build_examples, make_dataloader, prepare_latent_cache

    check_outputs(cfg)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
        log_with="tensorboard", project_config=ProjectConfiguration(
            project_dir=str(ctx.run_dir), logging_dir=str(ctx.run_dir / "tensorboard")))
    set_seed(cfg.seed)
    ctx.log(f"processes: {accelerator.num_processes}, device: {accelerator.device}, "
            f"mixed precision: {cfg.mixed_precision}")

    model = load_sd_model(cfg.pretrained_model_name_or_path, cfg.vae,
                          cfg.v_parameterization or None)
    if model.arch not in ("sd1", "sd2"):
        raise ValueError(f"{cfg.pretrained_model_name_or_path}: {model.arch} training is not supported yet "
                         "(SD 1.x and SD 2.x are)")
    ctx.log(f"model: {model.arch}{' v-prediction' if model.v_prediction else ''} from {model.source}")
    all_snr = snr(model.noise_scheduler, torch.arange(model.noise_scheduler.config.num_train_timesteps))
    if cfg.zero_terminal_snr:
        apply_zero_terminal_snr(model.noise_scheduler)
        if not model.v_prediction:
            ctx.warning("zero_terminal_snr without v-prediction: the last timestep is pure noise, which an "
                        "eps-prediction model cannot denoise; use it with v_parameterization")

    if cfg.cache_latents:
        if accelerator.is_main_process:
            prepare_latent_cache(cfg, ctx)
        accelerator.wait_for_everyone()
    examples = build_examples(cfg, ctx)
    if not examples:
        raise ValueError("no usable images in train_data_dir (see the warnings above)")
    dataloader = make_dataloader(examples, cfg)
    sampler = dataloader.batch_sampler  # ours; accelerate wraps it when sharding

    dtype = weight_dtype(cfg.mixed_precision)
    model.vae.requires_grad_(False).to(accelerator.device, dtype=dtype)
    model.text_encoder.requires_grad_(False).to(accelerator.device, dtype=dtype)
    unet = model.unet
    if accelerator.device.type == "cuda" and importlib.util.find_spec("xformers"):
        unet.enable_xformers_memory_efficient_attention()  # else diffusers uses PyTorch SDPA
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    lr = scaled_lr(cfg.learning_rate, cfg.train_batch_size, cfg.gradient_accumulation_steps) if cfg.scale_lr \
        else cfg.learning_rate
    optimizer = make_optimizer(cfg.optimizer_type, unet.parameters(), lr, parse_optimizer_args(cfg.optimizer_args))
    if is_self_scheduling(optimizer):
        ctx.warning("Adafactor in relative-step mode sets its own step size: learning_rate, lr_scheduler and "
                    "lr_drops are ignored (optimizer_args relative_step=False scale_parameter=False to use them)")
    dataloader = accelerator.prepare(dataloader)
    max_steps, num_epochs = total_steps(cfg, len(dataloader))  # batches of this process, once sharded
    n = accelerator.num_processes  # accelerate steps the scheduler once per process for each update
    lr_scheduler = make_scheduler(
        optimizer, cfg.lr_scheduler, max_steps * n, warmup_steps_of(cfg.lr_warmup_steps, max_steps) * n,
        cfg.lr_scheduler_num_cycles, cfg.lr_scheduler_power, cfg.lr_decay_steps * n, cfg.lr_drops)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    position = Position()
    if cfg.resume:
        position = checkpoints.load_position(Path(cfg.resume))
        accelerator.load_state(cfg.resume)
        ctx.log(f"resumed from {cfg.resume} at step {position.global_step} (epoch {position.epoch + 1}, "
                f"batch {position.batch_in_epoch})")
    if accelerator.is_main_process:
        accelerator.init_trackers("train")
    ctx.log(f"training {max_steps} steps over {num_epochs} epoch(s), {len(examples)} images, "
            f"{len(dataloader)} batches per epoch")

    def save(suffix: str, with_state: bool) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            path = checkpoints.model_path(cfg.output_dir, cfg.output_name, cfg.save_model_as, suffix)
            save_sd_model(_unwrapped(accelerator, unet, model), path, cfg.save_model_as, cfg.save_precision,
                          metadata=_metadata(cfg, position))
            ctx.event("checkpoint", path=str(path), step=position.global_step)
            ctx.log(f"saved {path}")
        if with_state:
            folder = checkpoints.save_state(
                accelerator, checkpoints.state_dir(cfg.output_dir, cfg.output_name, position.global_step),
                position)
            ctx.log(f"saved training state {folder} (resume with --set resume=...)")

    started, stopped = time.time(), False
    ctx.progress(position.global_step, max_steps)
    while position.epoch < num_epochs and position.global_step < max_steps and not stopped:
        sampler.set_epoch(position.epoch)
        dataloader.set_epoch(position.epoch)
        batches = (accelerator.skip_first_batches(dataloader, position.batch_in_epoch)
                   if position.batch_in_epoch else dataloader)
        for batch in batches:
            with accelerator.accumulate(unet):
                loss = loss_of_batch(batch, model, unet, cfg, dtype, accelerator.device, all_snr)
                accelerator.backward(loss)
                if cfg.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            position.batch_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            position.global_step += 1
            ctx.progress(position.global_step, max_steps)
            if position.global_step % cfg.log_every_n_steps == 0 or position.global_step == max_steps:
                _log_metrics(ctx, accelerator, position.global_step, loss, lr_scheduler)
            if checkpoints.should_save_step(position.global_step, cfg.save_every_n_steps) \
                    and position.global_step < max_steps:
                save(checkpoints.step_suffix(position.global_step), cfg.save_state)
                checkpoints.prune(cfg.output_dir, cfg.output_name, "step", cfg.save_last_n_steps)
            if position.global_step >= max_steps:
                break
            if _stop_requested(accelerator, ctx):
                stopped = True
                break
        else:
            position.epoch, position.batch_in_epoch = position.epoch + 1, 0
            if cfg.save_every_n_epochs and position.epoch % cfg.save_every_n_epochs == 0 \
                    and position.epoch < num_epochs:
                save(checkpoints.epoch_suffix(position.epoch), cfg.save_state)
                checkpoints.prune(cfg.output_dir, cfg.output_name, "epoch", cfg.save_last_n_epochs)

    if stopped:
        folder = checkpoints.save_state(
            accelerator, checkpoints.state_dir(cfg.output_dir, cfg.output_name, position.global_step), position)
        ctx.log(f"stopped at step {position.global_step}; resume with --set resume={folder}")
        result = {"stopped_at": position.global_step, "state": str(folder)}
    else:
        save("", cfg.save_state)
        result = {"steps": position.global_step, "model": str(checkpoints.model_path(
            cfg.output_dir, cfg.output_name, cfg.save_model_as))}
    ctx.log(f"U-Net checksum on process {accelerator.process_index}: {_checksum(unet):.10e}")
    accelerator.end_training()
    result["seconds"] = round(time.time() - started, 1)
    return result


def _stop_requested(accelerator, ctx) -> bool:
    """Whether any process saw the STOP file (all processes must stop at the same step)."""
    flag = torch.tensor([1.0 if ctx.should_stop() else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _log_metrics(ctx, accelerator, step, loss, lr_scheduler) -> None:
    """Loss of the step, averaged over processes, and the learning rate of the next step (as kohya logs)."""
    value = accelerator.gather(loss.detach()).mean().item()
    lr = lr_scheduler.get_last_lr()[0]
    if accelerator.is_main_process:
        ctx.metric("loss", step, value)
        ctx.metric("lr", step, lr)
        accelerator.log({"loss": value, "lr": lr}, step=step)


def _checksum(module: torch.nn.Module) -> float:
    """A number that differs when weights differ: every process must end with the same one."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in module.parameters()))


def _unwrapped(accelerator, unet, model):
    """The model with the trained U-Net taken out of its accelerate/DDP wrapper."""
    model.unet = accelerator.unwrap_model(unet)
    return model


def _metadata(cfg: TrainConfig, position: Position) -> dict:
    keys = ("learning_rate", "train_batch_size", "gradient_accumulation_steps", "optimizer_type",
            "lr_scheduler", "mixed_precision", "clip_skip", "max_token_length", "max_resolution", "seed")
    return {"ss_training_steps": position.global_step, "ss_epoch": position.epoch,
            **{f"ss_{k}": getattr(cfg, k) for k in keys}}
