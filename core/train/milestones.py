"""What a training run does between optimizer steps, when it is due: validation (and auto_stop),
samples, model saves (raw, EMA, best) with resumable states, and honouring a stop request."""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch

from core.config import TrainConfig
from core.config.block_weights import BLOCK_SETTINGS
from core.jobs.protocol import JobContext
from core.models.lora import save_lora
from core.models.lycoris_net import save_network
from core.models.sd import save_sd_model
from core.train import checkpoints
from core.train.checkpoints import BEST_SUFFIX, EMA_SUFFIX, Position, model_file
from core.train.conditioning import PromptEncoder
from core.train.ema import EMA
from core.train.lycoris import network_metadata
from core.train.samples import SamplePrompt, generate_samples
from core.train.trainable import lora_parts
from core.train.validation import Plateau, scale_learning_rates, validation_loss

Unit = Literal["step", "epoch"]
Decision = Literal["done", "stopped", "auto_stopped"]
SUFFIX_OF = {"step": checkpoints.step_suffix, "epoch": checkpoints.epoch_suffix}


@dataclass(kw_only=True)
class Milestones:
    """Called by the loop after every optimizer update and at the end of every epoch."""
    cfg: TrainConfig
    ctx: JobContext
    accelerator: object
    model: object                 # the SDModel (its modules unwrapped)
    position: Position
    max_steps: int
    num_epochs: int
    optimizer: object             # accelerate-wrapped, as the loop steps them
    lr_scheduler: object
    eval_prompts: PromptEncoder   # the unwrapped text encoder(s), with the training cache
    dtype: torch.dtype
    sample_prompts: list[SamplePrompt] = field(default_factory=list)
    validation: list = field(default_factory=list)
    ema: EMA | None = None
    plateau: Plateau | None = None
    last_loss: float | None = None

    def due(self, unit: Unit, count: int) -> Decision | None:
        """Do what the settings ask after `count` steps or epochs: validate (first: a state saved at
        this point includes its auto_stop decision), sample, save, see a stop request. Returns how
        the run ends now, or None to go on. The run's last step or epoch only ends it: `finish`
        validates, saves and samples the final model."""
        cfg = self.cfg
        final = count >= (self.max_steps if unit == "step" else self.num_epochs)
        if not final and checkpoints.is_due(count, getattr(cfg, f"validate_every_n_{unit}s")) and self.validate():
            return "auto_stopped"
        if final:
            return "done"
        if checkpoints.is_due(count, getattr(cfg, f"sample_every_n_{unit}s")):
            self.sample()
        if checkpoints.is_due(count, getattr(cfg, f"save_every_n_{unit}s")):
            self.save(SUFFIX_OF[unit](count), cfg.save_state)
            checkpoints.prune(cfg.output_dir, cfg.output_name, unit, getattr(cfg, f"save_last_n_{unit}s"))
        if unit == "step" and self.stop_requested():
            return "stopped"
        return None

    def finish(self, decision: Decision) -> dict:
        """The run's result: a resumable state when stopped, else the final model (validated, saved,
        sampled)."""
        cfg, position = self.cfg, self.position
        if decision == "stopped":
            folder = checkpoints.save_state(
                self.accelerator, checkpoints.state_dir(cfg.output_dir, cfg.output_name, position.global_step), position)
            self.ctx.log(f"stopped at step {position.global_step}; resume with --set resume={folder}")
            return {"stopped_at": position.global_step, "state": str(folder)}
        if decision == "done":
            self.validate()
        self.save("", cfg.save_state)
        self.sample()
        result = {"steps": position.global_step, "model": str(model_file(cfg)), "final_loss": self.last_loss}
        return {**result, "auto_stopped": True} if decision == "auto_stopped" else result

    def stop_requested(self) -> bool:
        """Whether any process saw a stop request (all processes must stop at the same step)."""
        flag = torch.tensor([1.0 if self.ctx.should_stop() else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def evaluated_weights(self):
        """The weights that samples and validation use: the EMA ones when they are what is saved."""
        if self.ema is not None and self.cfg.ema_save == "instead":
            return self.ema.swapped_in()
        return nullcontext()

    def _write_model(self, suffix: str) -> None:
        cfg, position, model = self.cfg, self.position, self.model
        path = model_file(cfg, suffix)
        if cfg.train_lora and model.network is not None:
            save_network(path, model.network, {**{k: str(v) for k, v in _metadata(cfg, position).items()},
                                               **network_metadata(cfg, model.arch)})
        elif cfg.train_lora:
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
        if not self.sample_prompts:
            return
        cfg, accelerator = self.cfg, self.accelerator
        if accelerator.is_main_process:
            with self.evaluated_weights():
                generate_samples(self.model, self.model.unet, self.sample_prompts,
                                 self.ctx.run.samples_dir, self.position.global_step, seed=cfg.seed,
                                 prompt_settings=cfg, device=accelerator.device, autocast=accelerator.autocast,
                                 ctx=self.ctx, clip_dir=cfg.sample_clip_model)
        accelerator.wait_for_everyone()

    def validate(self) -> bool:
        """Validation loss on every process (same value everywhere, so every process takes the same
        auto_stop decision without talking); True when auto_stop ends the run."""
        if not self.validation:
            return False
        cfg, accelerator, step, plateau = self.cfg, self.accelerator, self.position.global_step, self.plateau
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
            scale_learning_rates(self.optimizer.optimizer, self.lr_scheduler.scheduler, cfg.auto_stop_lr_factor)
            self.ctx.log(f"validation loss has not improved for {cfg.auto_stop_patience} validations: learning "
                         f"rate x {cfg.auto_stop_lr_factor} (reduction {plateau.reductions})")
        elif decision == "stop":
            self.ctx.log(f"auto_stop: validation loss has not improved (best {plateau.best:.6f}); stopping")
        return decision == "stop"


def _metadata(cfg: TrainConfig, position: Position) -> dict:
    keys = ("learning_rate", "learning_rate_te", "learning_rate_te1", "learning_rate_te2", "train_unet",
            "train_text_encoder", "train_batch_size", "gradient_accumulation_steps", "optimizer_type", "lr_scheduler",
            "mixed_precision", "clip_skip", "max_token_length", "max_resolution", "seed", "use_ema")
    return {"ss_training_steps": position.global_step, "ss_epoch": position.epoch,
            **{f"ss_{k}": getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}, **_network_args(cfg)}


def _network_args(cfg: TrainConfig) -> dict:
    """sd-scripts' ss_network_args (JSON) of a LoRA with block settings, and its network_dim / network_alpha
    (the modules' own ranks and alphas differ)."""
    args = {name: str(getattr(cfg, name)) for name in BLOCK_SETTINGS if getattr(cfg, name)}
    if not (cfg.train_lora and args):
        return {}
    return {"ss_network_args": json.dumps(args), "ss_network_dim": cfg.network_dim,
            "ss_network_alpha": f"{cfg.network_alpha:g}"}
