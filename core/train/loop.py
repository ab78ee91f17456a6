"""The training loop (job `train`): SD 1.x / 2.x / XL fine-tuning of the U-Net and/or text encoder(s).

Read top to bottom: `run` sets the run up (`set_up`: checks, model, data, what trains, optimizer),
then `train_loop` takes each batch through loss, backward, clip and step, and after every update
and every epoch asks `Milestones.due` what is due (validate, sample, save, stop); `Milestones.finish`
writes the result. Multi-GPU and multi-node runs go through `accelerate launch`; nothing here is
distributed code of our own.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from core.config import TrainConfig
from core.config.lycoris import LYCORIS_MODULE
from core.estimate.run_watch import RunWatch
from core.jobs.protocol import JobContext
from core.models.sd import SDModel, load_sd_model
from core.train import checkpoints
from core.train.block_lr import block_ranks, unet_lr_weights
from core.train.checkpoints import Position
from core.train.conditioning import PromptEncoder, static_captions
from core.train.data import make_dataloader
from core.train.ema import EMA
from core.train.fused import fuse_into_backward
from core.train.loss import snr
from core.train.lycoris import add_lycoris_adapters
from core.train.milestones import Decision, Milestones
from core.train.noise import apply_zero_terminal_snr
from core.train.optimizers import make_optimizer, parse_optimizer_args, scaled_lr
from core.train.samples import load_clip, run_prompts
from core.train.schedules import make_scheduler, steps_of, total_steps
from core.train.start_checks import refuse_or_warn, settings_problems
from core.train.step import loss_of_batch, weight_dtype
from core.train.subsets import prepare_data
from core.train.trainable import (
    add_lora_adapters,
    param_groups,
    set_trainable,
    text_encoder_parts,
    text_encoder_rates,
    text_encoder_stop_step,
)
from core.train.validation import Plateau


@dataclass(kw_only=True)
class Training:
    """A run that is set up: what `train_loop` steps through."""
    cfg: TrainConfig
    ctx: JobContext
    accelerator: Accelerator
    model: SDModel
    dataloader: object            # accelerate-wrapped; its batch sampler is `sampler`
    sampler: object
    modules: dict                 # the trained parts, accelerate-wrapped, by name
    trained_params: list[torch.nn.Parameter]
    prompts: PromptEncoder        # what the loss encodes captions with
    optimizer: object
    lr_scheduler: object
    all_snr: torch.Tensor
    dtype: torch.dtype
    position: Position
    milestones: Milestones
    ema: EMA | None
    text_encoder_stop: int | None  # the step from which the text encoder(s) are frozen

    @property
    def unet(self):
        return self.modules.get("unet", self.model.unet)


def run(cfg: TrainConfig, ctx: JobContext) -> dict:
    started = time.time()
    training = set_up(cfg, ctx)
    first_step = training.position.global_step
    watch = RunWatch(cfg, ctx, training.accelerator, training.model, training.milestones.max_steps - first_step)
    decision = train_loop(training)
    measured = watch.finish(training.position.global_step - first_step)  # the training steps' peak and rate
    result = {**training.milestones.finish(decision), "measured": measured}
    ctx.log(f"weights checksum on process {training.accelerator.process_index}: "
            f"{_checksum(training.trained_params):.10e}")
    training.accelerator.end_training()
    return {**result, "seconds": round(time.time() - started, 1)}


def train_loop(t: Training) -> Decision:
    cfg, accelerator, position = t.cfg, t.accelerator, t.position
    max_steps, num_epochs = t.milestones.max_steps, t.milestones.num_epochs
    t.ctx.progress(position.global_step, max_steps)
    if cfg.sample_at_first and position.global_step == 0:
        t.milestones.sample()
    decision = None
    while decision is None and position.epoch < num_epochs and position.global_step < max_steps:
        for batch in epoch_batches(t):
            with accelerator.accumulate(*t.modules.values()), accelerator.autocast():
                loss = loss_of_batch(batch, t.model, t.unet, t.prompts, cfg, t.dtype, accelerator.device, t.all_snr)
                accelerator.backward(loss)  # with fused_backward_pass, it also clipped and stepped (core/train/fused.py)
                if not cfg.fused_backward_pass:
                    if cfg.max_grad_norm and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(t.trained_params, cfg.max_grad_norm)
                    t.optimizer.step()
                t.lr_scheduler.step()
                t.optimizer.zero_grad(set_to_none=True)
            position.batch_in_epoch += 1
            if accelerator.sync_gradients:
                position.global_step += 1
                after_update(t, loss)
                if decision := t.milestones.due("step", position.global_step):
                    break
        else:
            position.epoch, position.batch_in_epoch = position.epoch + 1, 0
            decision = t.milestones.due("epoch", position.epoch)
    return decision or "done"


def epoch_batches(t: Training):
    """The batches of the epoch in progress (those a resumed run had done are skipped), each
    image it leaves out reported once."""
    epoch, done = t.position.epoch, t.position.batch_in_epoch
    t.sampler.set_epoch(epoch)
    t.dataloader.set_epoch(epoch)
    for batch in t.accelerator.skip_first_batches(t.dataloader, done) if done else t.dataloader:
        for path, reason in batch["skipped"]:
            t.ctx.skipped(path, reason)
        yield batch


def after_update(t: Training, loss: torch.Tensor) -> None:
    """EMA, progress, logged metrics and the text encoder's freeze after an optimizer update."""
    step, max_steps = t.position.global_step, t.milestones.max_steps
    if t.ema is not None:
        t.ema.step(step)
    t.ctx.progress(step, max_steps)
    if step % t.cfg.log_every_n_steps == 0 or step == max_steps:
        t.milestones.last_loss = _log_metrics(t.ctx, t.accelerator, step, loss, t.lr_scheduler)
    freeze_text_encoder_if_due(t)


def freeze_text_encoder_if_due(t: Training) -> None:
    """stop_text_encoder_training: from its step on, the loss encodes with the frozen, unwrapped
    text encoder(s)."""
    if t.prompts.trains and t.text_encoder_stop is not None and t.position.global_step >= t.text_encoder_stop:
        for part in text_encoder_parts(t.model):
            getattr(t.model, part).requires_grad_(False).eval()
        t.prompts = t.milestones.eval_prompts
        t.ctx.log(f"text encoder frozen from step {t.text_encoder_stop} (stop_text_encoder_training)")


# --- set-up --------------------------------------------------------------------------------------

def set_up(cfg: TrainConfig, ctx: JobContext) -> Training:
    accelerator = start_accelerator(cfg, ctx)
    sample_prompts = run_prompts(cfg.sample_prompts, cfg.sample_prompt)
    if cfg.sample_clip_model.strip():
        load_clip(cfg.sample_clip_model)  # a model that does not load fails now, not at every sample set
    set_seed(cfg.seed)
    device, dtype = accelerator.device, weight_dtype(cfg.mixed_precision)
    model, all_snr = load_model(cfg, ctx)
    examples, validation = prepare_data(cfg, ctx, accelerator)
    dataloader = make_dataloader(examples, cfg)
    sampler = dataloader.batch_sampler  # ours; accelerate wraps it when sharding
    te_rates, trained = choose_trained(cfg, ctx, model, device, dtype)
    eval_prompts = eval_prompt_encoder(cfg, ctx, model, examples + validation, device, dtype)

    optimizer = make_optimizer(cfg.optimizer_type, param_groups(trained, _lr(cfg, cfg.learning_rate), {
        part: _lr(cfg, rate) for part, rate in te_rates.items()}, unet_lr_weights(model, cfg)),
        _lr(cfg, cfg.learning_rate), parse_optimizer_args(cfg.optimizer_args))
    dataloader = accelerator.prepare(dataloader)
    max_steps, num_epochs = total_steps(cfg, len(dataloader))  # batches of this process, once sharded
    n = accelerator.num_processes  # accelerate steps the scheduler once per process for each update
    lr_scheduler = make_scheduler(
        optimizer, cfg.lr_scheduler, max_steps * n, steps_of(cfg.lr_warmup_steps, max_steps) * n,
        cfg.lr_scheduler_num_cycles, cfg.lr_scheduler_power, cfg.lr_decay_steps * n, cfg.lr_drops)
    *prepared, optimizer, lr_scheduler = accelerator.prepare(*(getattr(model, p) for p in trained), optimizer,
                                                             lr_scheduler)
    modules = dict(zip(trained, prepared))
    if cfg.fused_backward_pass:
        fuse_into_backward(optimizer, cfg.max_grad_norm)
        ctx.log("fused backward pass: each weight is updated as soon as its gradient is computed"
                + (f"; max_grad_norm {cfg.max_grad_norm:g} clips each weight's gradient on its own"
                   if cfg.max_grad_norm else ""))
    prompts = eval_prompts.running([modules.get(part, getattr(model, part)) for part in text_encoder_parts(model)],
                                   trains=True) if te_rates else eval_prompts
    if cfg.full_fp16:
        allow_fp16_gradients(accelerator)
    trained_params = [p for params in trained.values() for p in params]
    ema = EMA(trained_params, cfg.ema_decay, cfg.ema_update_every, cfg.ema_on_cpu) if cfg.use_ema else None
    plateau = Plateau(cfg.auto_stop_patience, cfg.auto_stop_min_delta, cfg.auto_stop_lr_reductions,
                      cfg.auto_stop_lr_factor) if cfg.auto_stop else None
    for extra_state in (ema, plateau):
        if extra_state is not None:
            accelerator.register_for_checkpointing(extra_state)
    position = resume(cfg, ctx, accelerator)
    if accelerator.is_main_process:
        accelerator.init_trackers("train")
    ctx.log(f"training {max_steps} steps over {num_epochs} epoch(s), {len(examples)} images, "
            f"{len(dataloader)} batches per epoch")
    milestones = Milestones(cfg=cfg, ctx=ctx, accelerator=accelerator, model=model, position=position,
                            max_steps=max_steps, num_epochs=num_epochs, optimizer=optimizer,
                            lr_scheduler=lr_scheduler, eval_prompts=eval_prompts, dtype=dtype,
                            sample_prompts=sample_prompts, validation=validation, ema=ema, plateau=plateau)
    training = Training(cfg=cfg, ctx=ctx, accelerator=accelerator, model=model, dataloader=dataloader,
                        sampler=sampler, modules=modules, trained_params=trained_params, prompts=prompts,
                        optimizer=optimizer, lr_scheduler=lr_scheduler, all_snr=all_snr, dtype=dtype,
                        position=position, milestones=milestones, ema=ema,
                        text_encoder_stop=text_encoder_stop_step(cfg.stop_text_encoder_training, max_steps))
    freeze_text_encoder_if_due(training)  # a resumed run past the freeze
    return training


def start_accelerator(cfg: TrainConfig, ctx: JobContext) -> Accelerator:
    """accelerate's view of the run, once the start checks passed (their warnings logged)."""
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
        log_with="tensorboard", project_config=ProjectConfiguration(
            project_dir=str(ctx.run.path), logging_dir=str(ctx.run.tensorboard_dir)))
    refuse_or_warn(settings_problems(cfg, accelerator.num_processes)[0], ctx.warning)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    ctx.log(f"processes: {accelerator.num_processes}, device: {accelerator.device}, "
            f"mixed precision: {cfg.mixed_precision}")
    return accelerator


def load_model(cfg: TrainConfig, ctx: JobContext) -> tuple[SDModel, torch.Tensor]:
    """(the base model, the SNR of each timestep of its original noise schedule, for min_snr_gamma)."""
    model = load_sd_model(cfg.pretrained_model_name_or_path, cfg.vae, cfg.v_parameterization or None)
    ctx.log(f"model: {model.arch}{' v-prediction' if model.v_prediction else ''} from {model.source}")
    all_snr = snr(model.noise_scheduler, torch.arange(model.noise_scheduler.config.num_train_timesteps))
    if cfg.zero_terminal_snr:
        apply_zero_terminal_snr(model.noise_scheduler)
    return model, all_snr


def choose_trained(cfg: TrainConfig, ctx: JobContext, model, device, dtype) -> tuple[dict, dict]:
    """(learning rate of each trained text encoder, trained parameters by part), the modules placed."""
    te_rates = text_encoder_rates(model, cfg)
    trained = set_trainable(model, cfg.train_unet, list(te_rates), cfg.unet_blocks, cfg.clip_skip)
    if cfg.train_lora and cfg.network_module == LYCORIS_MODULE:
        trained = add_lycoris_adapters(model, cfg, list(te_rates))
    elif cfg.train_lora:
        trained = add_lora_adapters(model, list(te_rates), cfg.network_dim, cfg.network_alpha,
                                    cfg.network_dropout, cfg.lora_targets, cfg.clip_skip, block_ranks(model, cfg))
    place_modules(model, cfg, trained, device, dtype)
    if problem := use_xformers(model.unet, device):
        ctx.warning(problem)
    ctx.log("training: " + ", ".join(f"{part} ({sum(p.numel() for p in params):,} parameters)"
                                     for part, params in trained.items()))
    return te_rates, trained


def eval_prompt_encoder(cfg: TrainConfig, ctx: JobContext, model, examples: list, device, dtype) -> PromptEncoder:
    """The encoder of the unwrapped text encoder(s) (validation; the loss once they are frozen); with
    cache_text_encoder_outputs it serves every caption of `examples` from a cache made now, and the
    text encoders leave the device."""
    prompts = PromptEncoder(model, cfg, device)
    if not cfg.cache_text_encoder_outputs:
        return prompts
    captions, texts = set(), [e.caption for e in examples]
    # Each subset's own prefix, suffix and dropout (training), and the run's (validation processes captions so).
    for settings in {id(o): o for o in (cfg, *(e.options for e in examples if e.options))}.values():
        captions.update(static_captions(texts, settings.caption_prefix, settings.caption_suffix,
                                        with_empty=settings.caption_dropout_rate > 0))
    captions = sorted(captions)
    prompts = prompts.with_cache(captions, dtype, ctx=ctx)
    for part in text_encoder_parts(model):
        getattr(model, part).to("cpu", torch.float32)  # needed again only for sample prompts
    ctx.log(f"cached text-encoder outputs of {len(captions)} captions")
    return prompts


def _lr(cfg: TrainConfig, rate: float) -> float:
    return scaled_lr(rate, cfg.train_batch_size, cfg.gradient_accumulation_steps) if cfg.scale_lr else rate


def place_modules(model, cfg: TrainConfig, trained: dict, device, dtype) -> None:
    """Devices, dtypes and modes: trained modules in fp32 (or fully in fp16/bf16), frozen ones in
    the mixed-precision dtype; gradient checkpointing where it applies."""
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
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()  # also saves memory when only the text encoder trains


def use_xformers(unet, device) -> str | None:
    """xformers' memory-efficient attention on a CUDA device when it is installed (else diffusers uses
    PyTorch's SDPA); why not, when the installed xformers cannot run on this GPU (a build for newer GPUs
    on a GTX 10xx, say): then SDPA it is."""
    if device.type != "cuda" or not importlib.util.find_spec("xformers"):
        return None
    try:
        unet.enable_xformers_memory_efficient_attention()
    except Exception as exc:  # diffusers runs a small attention first: any failure means it cannot be used here
        unet.set_default_attn_processor()
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        return (f"xformers cannot run on this GPU ({type(exc).__name__}: {reason}); training uses PyTorch's "
                "attention (SDPA) instead, which needs a little more memory")
    return None


def allow_fp16_gradients(accelerator) -> None:
    """full_fp16: the gradient scaler refuses to unscale fp16 gradients unless told it may (as kohya)."""
    scaler = accelerator.scaler
    if scaler is None:
        return
    unscale = scaler._unscale_grads_
    scaler._unscale_grads_ = lambda optimizer, inv_scale, found_inf, allow_fp16: unscale(
        optimizer, inv_scale, found_inf, True)


def resume(cfg: TrainConfig, ctx: JobContext, accelerator) -> Position:
    """Where the run starts: the saved state `resume` names (loaded into the prepared objects), or
    the beginning."""
    if not cfg.resume:
        return Position()
    position = checkpoints.load_position(Path(cfg.resume))
    accelerator.load_state(cfg.resume)  # the state's pickles were checked by the start checks
    ctx.log(f"resumed from {cfg.resume} at step {position.global_step} (epoch {position.epoch + 1}, "
            f"batch {position.batch_in_epoch})")
    return position


def _log_metrics(ctx, accelerator, step, loss, lr_scheduler) -> float:
    """Loss of the step, averaged over processes (returned), and the learning rate of the next step (as
    kohya logs; the base rate where block lr weights scale the first group's)."""
    value = accelerator.gather(loss.detach()).mean().item()
    lr = lr_scheduler.get_last_lr()[0] / lr_scheduler.scheduler.optimizer.param_groups[0].get("lr_weight", 1.0)
    if accelerator.is_main_process:
        ctx.metric("loss", step, value)
        ctx.metric("lr", step, lr)
        accelerator.log({"loss": value, "lr": lr}, step=step)
    return value


def _checksum(params: list[torch.nn.Parameter]) -> float:
    """A number that differs when weights differ: every process must end with the same one."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in params))
