"""What a training run writes between steps: model saves (raw, EMA, best), samples, validation."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from core.config import TrainConfig
from core.train import checkpoints
from core.train.checkpoints import BEST_SUFFIX, EMA_SUFFIX, Position
from core.train.conditioning import PromptEncoder


def model_file(cfg: TrainConfig, suffix: str = "") -> Path:
    """Where a save of this run goes: the model (file or diffusers folder), or the LoRA file."""
    return checkpoints.model_path(cfg.output_dir, cfg.output_name, "safetensors" if cfg.train_lora
                                  else cfg.save_model_as, suffix)


class RunOutputs:
    """Called by the loop at the steps and epochs the config asks for."""

    def __init__(self, cfg, ctx, accelerator, model, position, ema, sample_prompts, validation,
                 eval_prompts: PromptEncoder, prompts: PromptEncoder, dtype):
        self.cfg, self.ctx, self.accelerator, self.model, self.position = cfg, ctx, accelerator, model, position
        self.ema, self.sample_prompts, self.validation, self.dtype = ema, sample_prompts, validation, dtype
        self.eval_prompts = eval_prompts  # the raw (unwrapped) text encoder, sharing the training cache
        self.eval_prompts.cache = prompts.cache
        self.last_loss: float | None = None

    def evaluated_weights(self):
        """The weights that samples and validation use: the EMA ones when they are what is saved."""
        if self.ema is not None and self.cfg.ema_save == "instead":
            return self.ema.swapped_in()
        return nullcontext()

    def _write_model(self, suffix: str) -> None:
        cfg, position, model = self.cfg, self.position, self.model
        from core.models.lora import save_lora
        from core.train.trainable import lora_parts
        from core.models.sd import save_sd_model

        path = model_file(cfg, suffix)
        if cfg.train_lora:
            save_lora(path, lora_parts(model), model.arch == "sdxl",
                      metadata={k: str(v) for k, v in _metadata(cfg, position).items()}, fmt=cfg.lora_save_format)
        else:
            save_sd_model(model, path, cfg.save_model_as, cfg.save_precision, metadata=_metadata(cfg, position))
        self.ctx.event("checkpoint", path=str(path), step=position.global_step)
        self.ctx.log(f"saved {path}")

    def save(self, suffix: str, with_state: bool) -> None:
        accelerator, cfg = self.accelerator, self.cfg
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if self.ema is None or cfg.ema_save == "alongside":
                self._write_model(suffix)
            if self.ema is not None:
                with self.ema.swapped_in():
                    self._write_model(suffix if cfg.ema_save == "instead" else suffix + EMA_SUFFIX)
        if with_state:
            folder = checkpoints.save_state(
                accelerator, checkpoints.state_dir(cfg.output_dir, cfg.output_name, self.position.global_step),
                self.position)
            self.ctx.log(f"saved training state {folder} (resume with --set resume=...)")

    def sample(self) -> None:
        """Sample images from the prompt file (main process; the others wait)."""
        from core.train.samples import generate_samples

        if not self.sample_prompts:
            return
        cfg, accelerator = self.cfg, self.accelerator
        if accelerator.is_main_process:
            with self.evaluated_weights():
                generate_samples(self.model, self.model.unet, self.sample_prompts,
                                 self.ctx.run.samples_dir, self.position.global_step, seed=cfg.seed,
                                 clip_skip=cfg.clip_skip, max_token_length=cfg.max_token_length,
                                 device=accelerator.device, autocast=accelerator.autocast, ctx=self.ctx,
                                 clip_dir=cfg.sample_clip_model)
        accelerator.wait_for_everyone()

    def validate(self, optimizer, lr_scheduler, plateau) -> bool:
        """Validation loss on every process (same value everywhere, so every process takes the same
        auto_stop decision without talking); True when auto_stop ends the run."""
        from core.train.validation import scale_learning_rates, validation_loss

        if not self.validation:
            return False
        cfg, accelerator, step = self.cfg, self.accelerator, self.position.global_step
        with self.evaluated_weights(), accelerator.autocast():
            value = validation_loss(self.validation, self.model.unet, self.eval_prompts, self.model,
                                    seed=cfg.validation_seed, batch_size=cfg.train_batch_size,
                                    device=accelerator.device, dtype=self.dtype, caption_prefix=cfg.caption_prefix,
                                    caption_suffix=cfg.caption_suffix, max_image_pixels=cfg.max_image_pixels)
        if accelerator.is_main_process:
            self.ctx.metric("val_loss", step, value)
            accelerator.log({"val_loss": value}, step=step)
        self.ctx.log(f"step {step}: validation loss {value:.6f}")
        if plateau is None:
            return False
        decision = plateau.update(value)
        if decision == "improved":
            self.save(BEST_SUFFIX, with_state=False)
        elif decision == "reduce":
            scale_learning_rates(optimizer.optimizer, lr_scheduler.scheduler, cfg.auto_stop_lr_factor)
            self.ctx.log(f"validation loss has not improved for {cfg.auto_stop_patience} validations: learning "
                         f"rate x {cfg.auto_stop_lr_factor} (reduction {plateau.reductions})")
        elif decision == "stop":
            self.ctx.log(f"auto_stop: validation loss has not improved (best {plateau.best:.6f}); stopping")
        return decision == "stop"


def _metadata(cfg: TrainConfig, position: Position) -> dict:
    keys = ("learning_rate", "learning_rate_te", "learning_rate_te1", "learning_rate_te2", "train_unet", "train_text_encoder", "train_batch_size",
            "gradient_accumulation_steps", "optimizer_type", "lr_scheduler", "mixed_precision", "clip_skip",
            "max_token_length", "max_resolution", "seed", "use_ema")
    return {"ss_training_steps": position.global_step, "ss_epoch": position.epoch,
            **{f"ss_{k}": getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}}
