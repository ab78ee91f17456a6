"""The training loop (job `train`): SD 1.x / 2.x / XL fine-tuning of the U-Net and/or text encoder(s).

Read top to bottom: load the model, prepare the data, choose what trains, then for each batch the
loss of core.train.step, backward, step. Saving, samples, validation, stopping and resuming happen
between optimizer steps. Multi-GPU and multi-node runs go through `accelerate launch`; nothing here
is distributed code of our own.
"""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import torch

from core.config import TrainConfig
from core.jobs.protocol import JobContext
from core.train import checkpoints
from core.train.checkpoints import BEST_SUFFIX, EMA_SUFFIX, Position
from core.train.conditioning import PromptEncoder, static_captions
from core.train.ema import EMA
from core.train.loss import snr
from core.train.noise import apply_zero_terminal_snr
from core.train.optimizers import is_self_scheduling, make_optimizer, parse_optimizer_args, scaled_lr
from core.train.outputs import RunOutputs, model_file
from core.train.schedules import make_scheduler, steps_of
from core.train.step import loss_of_batch, weight_dtype
from core.train.trainable import (
    add_lora_adapters,
    param_groups,
    set_trainable,
    text_encoder_parts,
    text_encoder_rates,
    text_encoder_stop_step,
)


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int, int]:
    """(max optimizer steps, epochs) from max_train_epochs or max_train_steps."""
    updates_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps))
    if cfg.max_train_epochs:
        return cfg.max_train_epochs * updates_per_epoch, cfg.max_train_epochs
    return cfg.max_train_steps, math.ceil(cfg.max_train_steps / updates_per_epoch)


def check_outputs(cfg: TrainConfig) -> None:
    """Refuse to overwrite a finished model of an earlier run (unless resuming it)."""
    for suffix in ("", EMA_SUFFIX, BEST_SUFFIX):
        final = model_file(cfg, suffix)
        if final.exists() and not cfg.resume:
            raise ValueError(f"{final} exists already: choose another output_name or output_dir "
                             "(nothing is overwritten), or resume the run that made it")
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)


def load_model(cfg: TrainConfig, ctx: JobContext):
    from core.models.sd import load_sd_model

    model = load_sd_model(cfg.pretrained_model_name_or_path, cfg.vae, cfg.v_parameterization or None)
    ctx.log(f"model: {model.arch}{' v-prediction' if model.v_prediction else ''} from {model.source}")
    if model.arch == "sdxl" and cfg.clip_skip > 1:
        ctx.warning(f"clip_skip {cfg.clip_skip} is ignored for SDXL: it always uses the penultimate layer of "
                    "its text encoders (as kohya)")
    return model


def prepare_data(cfg: TrainConfig, ctx: JobContext, accelerator):
    """(training examples, validation examples): the missing DreamBooth class images generated and the
    latent caches built (by the main process), the validation images split off or read from
    validation_data_dir, the class images added to the training examples."""
    from core.jobs.protocol import JobStopped
    from core.train.data import (
        build_examples,
        class_data_config,
        class_examples,
        class_image_count,
        prepare_class_images,
        prepare_latent_cache,
        readable_examples,
    )
    from core.train.validation import split_validation

    configs = [cfg]
    if cfg.validation_data_dir.strip():
        configs.append(cfg.model_copy(update={"train_data_dir": [cfg.validation_data_dir]}))
    if cfg.prior_preservation:
        configs.append(class_data_config(cfg))
    if accelerator.is_main_process:
        class_folder_full = prepare_class_images(cfg, ctx)
        if class_folder_full and cfg.cache_latents:
            for c in configs:
                prepare_latent_cache(c, ctx)
    accelerator.wait_for_everyone()
    if cfg.prior_preservation and class_image_count(cfg) < cfg.num_class_images:
        ctx.log("stopped while generating class images; start the run again to go on")
        raise JobStopped()
    examples = build_examples(cfg, ctx)
    if cfg.validation_data_dir.strip():
        validation = build_examples(configs[1], ctx)
        if not validation:
            raise ValueError(f"validation_data_dir {cfg.validation_data_dir}: no usable images")
    else:
        examples, validation = split_validation(examples, cfg.validation_split, cfg.validation_seed)
    if not examples:
        raise ValueError("no usable images in train_data_dir (see the warnings above)")
    if validation and not cfg.cache_latents:
        validation = readable_examples(validation, ctx, cfg.max_image_pixels)
    if cfg.prior_preservation:
        examples += class_examples(cfg, ctx, sum(e.repeats for e in examples))
    if validation:
        ctx.log(f"validation: {len(validation)} images held out")
    return examples, validation


def place_modules(model, cfg: TrainConfig, trained: dict, device, dtype) -> None:
    """Devices, dtypes and modes: trained modules in fp32 (or fully in fp16/bf16), frozen ones in
    the mixed-precision dtype; gradient checkpointing and xformers where they apply."""
    full = cfg.full_fp16 or cfg.full_bf16
    original_sdxl_vae = model.arch == "sdxl" and not cfg.vae.strip()  # overflows in fp16
    model.vae.to(device, dtype=torch.float32 if cfg.no_half_vae or original_sdxl_vae else dtype)
    for part in ("unet", *text_encoder_parts(model)):
        module = getattr(model, part)
        module.to(device, dtype=dtype if full or cfg.train_lora or part not in trained else torch.float32)
        if cfg.train_lora and not full:  # frozen base in the compute dtype, adapters in fp32
            for param in trained.get(part, []):
                param.data = param.data.float()
        module.train(part in trained)
        if cfg.gradient_checkpointing and part in trained and part != "unet":
            module.gradient_checkpointing_enable()
    if device.type == "cuda" and importlib.util.find_spec("xformers"):
        model.unet.enable_xformers_memory_efficient_attention()  # else diffusers uses PyTorch SDPA
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()  # also saves memory when only the text encoder trains


def allow_fp16_gradients(accelerator) -> None:
    """full_fp16: the gradient scaler refuses to unscale fp16 gradients unless told it may (as kohya)."""
    scaler = accelerator.scaler
    if scaler is None:
        return
    unscale = scaler._unscale_grads_
    scaler._unscale_grads_ = lambda optimizer, inv_scale, found_inf, allow_fp16: unscale(
        optimizer, inv_scale, found_inf, True)


def run(cfg: TrainConfig, ctx: JobContext) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from core.train.data import make_dataloader
    from core.train.samples import load_clip, read_prompt_file
    from core.train.validation import Plateau

    check_outputs(cfg)
    sample_prompts = read_prompt_file(cfg.sample_prompts) if cfg.sample_prompts.strip() else []
    if cfg.sample_clip_model.strip():
        load_clip(cfg.sample_clip_model)  # a bad folder fails now, not as a warning at every sample set
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
        log_with="tensorboard", project_config=ProjectConfiguration(
            project_dir=str(ctx.run_dir), logging_dir=str(ctx.run.tensorboard_dir)))
    set_seed(cfg.seed)
    device = accelerator.device
    ctx.log(f"processes: {accelerator.num_processes}, device: {device}, mixed precision: {cfg.mixed_precision}")
    if cfg.num_processes != accelerator.num_processes:
        ctx.warning(f"num_processes is {cfg.num_processes} but this run has {accelerator.num_processes} process(es): "
                    "several processes start through `accelerate launch` (the GUI does it; copy its command)")

    model = load_model(cfg, ctx)
    all_snr = snr(model.noise_scheduler, torch.arange(model.noise_scheduler.config.num_train_timesteps))
    if cfg.zero_terminal_snr:
        apply_zero_terminal_snr(model.noise_scheduler)
        if not model.v_prediction:
            ctx.warning("zero_terminal_snr without v-prediction: the last timestep is pure noise, which an "
                        "eps-prediction model cannot denoise; use it with v_parameterization")

    examples, validation = prepare_data(cfg, ctx, accelerator)
    dataloader = make_dataloader(examples, cfg)
    sampler = dataloader.batch_sampler  # ours; accelerate wraps it when sharding

    dtype = weight_dtype(cfg.mixed_precision)
    te_rates = text_encoder_rates(model, cfg)
    trained = set_trainable(model, cfg.train_unet, list(te_rates), cfg.unet_blocks, cfg.clip_skip)
    if cfg.train_lora:
        trained = add_lora_adapters(model, list(te_rates), cfg.network_dim, cfg.network_alpha,
                                    cfg.network_dropout, cfg.lora_targets, cfg.clip_skip)
    place_modules(model, cfg, trained, device, dtype)
    ctx.log("training: " + ", ".join(f"{part} ({sum(p.numel() for p in params):,} parameters)"
                                     for part, params in trained.items()))
    prompts = PromptEncoder(model, cfg.clip_skip, cfg.max_token_length, device)
    if cfg.cache_text_encoder_outputs:
        captions = static_captions([e.caption for e in examples + validation], cfg.caption_prefix,
                                   cfg.caption_suffix, with_empty=cfg.caption_dropout_rate > 0)
        prompts.fill_cache(captions, dtype, ctx=ctx)
        for part in text_encoder_parts(model):
            getattr(model, part).to("cpu", torch.float32)  # needed again only for sample prompts
        ctx.log(f"cached text-encoder outputs of {len(captions)} captions")

    def scaled(rate: float) -> float:
        return scaled_lr(rate, cfg.train_batch_size, cfg.gradient_accumulation_steps) if cfg.scale_lr else rate

    lr = scaled(cfg.learning_rate)
    optimizer = make_optimizer(cfg.optimizer_type,
                               param_groups(trained, lr, {part: scaled(rate) for part, rate in te_rates.items()}),
                               lr, parse_optimizer_args(cfg.optimizer_args))
    if is_self_scheduling(optimizer):
        ctx.warning("Adafactor in relative-step mode sets its own step size: learning_rate, lr_scheduler, "
                    "lr_drops and auto_stop's reductions are ignored (optimizer_args relative_step=False "
                    "scale_parameter=False to use them)")
    dataloader = accelerator.prepare(dataloader)
    max_steps, num_epochs = total_steps(cfg, len(dataloader))  # batches of this process, once sharded
    n = accelerator.num_processes  # accelerate steps the scheduler once per process for each update
    lr_scheduler = make_scheduler(
        optimizer, cfg.lr_scheduler, max_steps * n, steps_of(cfg.lr_warmup_steps, max_steps) * n,
        cfg.lr_scheduler_num_cycles, cfg.lr_scheduler_power, cfg.lr_decay_steps * n, cfg.lr_drops)
    modules = {part: getattr(model, part) for part in trained}
    *prepared, optimizer, lr_scheduler = accelerator.prepare(*modules.values(), optimizer, lr_scheduler)
    wrapped = dict(zip(modules, prepared))
    unet = wrapped.get("unet", model.unet)
    if te_rates:
        prompts.text_encoders = [wrapped.get(part, getattr(model, part)) for part in text_encoder_parts(model)]
        prompts.trains = True
    if cfg.full_fp16:
        allow_fp16_gradients(accelerator)
    trained_params = [p for params in trained.values() for p in params]
    ema = EMA(trained_params, cfg.ema_decay, cfg.ema_update_every, cfg.ema_on_cpu) if cfg.use_ema else None
    plateau = Plateau(cfg.auto_stop_patience, cfg.auto_stop_min_delta, cfg.auto_stop_lr_reductions,
                      cfg.auto_stop_lr_factor) if cfg.auto_stop else None
    for extra_state in (ema, plateau):
        if extra_state is not None:
            accelerator.register_for_checkpointing(extra_state)

    position = Position()
    if cfg.resume:
        position = checkpoints.load_position(Path(cfg.resume))
        checkpoints.check_state_files(Path(cfg.resume))
        accelerator.load_state(cfg.resume)
        ctx.log(f"resumed from {cfg.resume} at step {position.global_step} (epoch {position.epoch + 1}, "
                f"batch {position.batch_in_epoch})")
    te_stop = text_encoder_stop_step(cfg.stop_text_encoder_training, max_steps)

    def freeze_text_encoder_if_due() -> None:
        if prompts.trains and te_stop is not None and position.global_step >= te_stop:
            prompts.text_encoders = [getattr(model, part).requires_grad_(False).eval()
                                     for part in text_encoder_parts(model)]
            prompts.trains = False
            ctx.log(f"text encoder frozen from step {te_stop} (stop_text_encoder_training)")

    freeze_text_encoder_if_due()
    if accelerator.is_main_process:
        accelerator.init_trackers("train")
    ctx.log(f"training {max_steps} steps over {num_epochs} epoch(s), {len(examples)} images, "
            f"{len(dataloader)} batches per epoch")
    watch = RunOutputs(cfg, ctx, accelerator, model, position, ema, sample_prompts, validation,
                       PromptEncoder(model, cfg.clip_skip, cfg.max_token_length, device), prompts, dtype)

    started, stopped, auto_stopped = time.time(), False, False
    ctx.progress(position.global_step, max_steps)
    if cfg.sample_at_first and position.global_step == 0:
        watch.sample()
    while position.epoch < num_epochs and position.global_step < max_steps and not (stopped or auto_stopped):
        sampler.set_epoch(position.epoch)
        dataloader.set_epoch(position.epoch)
        batches = (accelerator.skip_first_batches(dataloader, position.batch_in_epoch)
                   if position.batch_in_epoch else dataloader)
        for batch in batches:
            for path, reason in batch["skipped"]:
                ctx.skipped(path, reason)
            with accelerator.accumulate(*wrapped.values()), accelerator.autocast():
                loss = loss_of_batch(batch, model, unet, prompts, cfg, dtype, device, all_snr)
                accelerator.backward(loss)
                if cfg.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trained_params, cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            position.batch_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            position.global_step += 1
            step = position.global_step
            if ema is not None:
                ema.step(step)
            ctx.progress(step, max_steps)
            if step % cfg.log_every_n_steps == 0 or step == max_steps:
                watch.last_loss = _log_metrics(ctx, accelerator, step, loss, lr_scheduler)
            freeze_text_encoder_if_due()
            # validation first: a state saved at this step includes its auto_stop decision
            if checkpoints.is_due(step, cfg.validate_every_n_steps) and step < max_steps:
                auto_stopped = watch.validate(optimizer, lr_scheduler, plateau)
            if step >= max_steps or auto_stopped:
                break
            if checkpoints.is_due(step, cfg.sample_every_n_steps):
                watch.sample()
            if checkpoints.is_due(step, cfg.save_every_n_steps):
                watch.save(checkpoints.step_suffix(step), cfg.save_state)
                checkpoints.prune(cfg.output_dir, cfg.output_name, "step", cfg.save_last_n_steps)
            if _stop_requested(accelerator, ctx):
                stopped = True
                break
        else:
            position.epoch, position.batch_in_epoch = position.epoch + 1, 0
            if position.epoch < num_epochs:
                if checkpoints.is_due(position.epoch, cfg.validate_every_n_epochs):
                    auto_stopped = watch.validate(optimizer, lr_scheduler, plateau)
                if auto_stopped:
                    break
                if checkpoints.is_due(position.epoch, cfg.sample_every_n_epochs):
                    watch.sample()
                if checkpoints.is_due(position.epoch, cfg.save_every_n_epochs):
                    watch.save(checkpoints.epoch_suffix(position.epoch), cfg.save_state)
                    checkpoints.prune(cfg.output_dir, cfg.output_name, "epoch", cfg.save_last_n_epochs)

    if stopped:
        folder = checkpoints.save_state(
            accelerator, checkpoints.state_dir(cfg.output_dir, cfg.output_name, position.global_step), position)
        ctx.log(f"stopped at step {position.global_step}; resume with --set resume={folder}")
        result = {"stopped_at": position.global_step, "state": str(folder)}
    else:
        if validation and not auto_stopped:
            watch.validate(optimizer, lr_scheduler, plateau)
        watch.save("", cfg.save_state)
        watch.sample()
        result = {"steps": position.global_step, "model": str(model_file(cfg)), "final_loss": watch.last_loss}
        if auto_stopped:
            result["auto_stopped"] = True
    ctx.log(f"weights checksum on process {accelerator.process_index}: {_checksum(trained_params):.10e}")
    accelerator.end_training()
    result["seconds"] = round(time.time() - started, 1)
    return result


def _stop_requested(accelerator, ctx) -> bool:
    """Whether any process saw the STOP file (all processes must stop at the same step)."""
    flag = torch.tensor([1.0 if ctx.should_stop() else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _log_metrics(ctx, accelerator, step, loss, lr_scheduler) -> float:
    """Loss of the step, averaged over processes (returned), and the learning rate of the next step (as
    kohya logs)."""
    value = accelerator.gather(loss.detach()).mean().item()
    lr = lr_scheduler.get_last_lr()[0]
    if accelerator.is_main_process:
        ctx.metric("loss", step, value)
        ctx.metric("lr", step, lr)
        accelerator.log({"loss": value, "lr": lr}, step=step)
    return value


def _checksum(params: list[torch.nn.Parameter]) -> float:
    """A number that differs when weights differ: every process must end with the same one."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in params))
