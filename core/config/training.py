"""The trainer's first section, "Training": what is trained, for how long, with which batch, learning
rate, precision and memory savers, EMA and seed."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from core.config.conditions import when, when_not
from core.config.schema import JobConfig, param

TRAINING = "Training"
TRAINS_TE = when("train_text_encoder", True)
EMA = when("use_ema", True)


class TrainingSettings(JobConfig):
    """Run length, batch, learning rate, precision, trained parts, EMA, seed."""
    train_lora: bool = param(
        False, "Train a LoRA (small adapter file, kohya format by default) instead of the model's own weights; "
        "off: full fine-tune.", label="Train a LoRA", group=TRAINING, essential=True)
    max_train_steps: int = param(1600, "Steps to train (ignored when max_train_epochs is set).", label="Steps",
                                 group=TRAINING, essential=True, applies=when_not("max_train_epochs"), ge=1)
    max_train_epochs: int = param(0, "Epochs (passes over the dataset) to train (0: use max_train_steps).",
                                  label="Epochs", group=TRAINING, essential=True, ge=0)
    train_batch_size: int = param(1, "Images per step (per GPU).", label="Batch size", group=TRAINING,
                                  essential=True, ge=1)
    gradient_accumulation_steps: int = param(
        1, "Steps whose gradients are summed before an update (a larger batch without the memory).",
        label="Gradient accumulation", group=TRAINING, advanced=True, ge=1)
    learning_rate: float = param(2e-6, "Learning rate (lr) of the U-Net (and of the text encoder unless set "
                                 "below).", label="Learning rate", group=TRAINING, essential=True, gt=0)
    scale_lr: bool = param(False, "Multiply the learning rate by sqrt(batch size x accumulation steps).",
                           label="Scale learning rate", group=TRAINING, advanced=True)
    mixed_precision: Literal["no", "fp16", "bf16"] = param(
        "no", "Compute precision (fp16/bf16 on GPUs; no: fp32).", label="Precision", group=TRAINING,
        essential=True)
    full_fp16: bool = param(
        False, "Keep the trained weights themselves in fp16 (needs mixed_precision fp16): least memory, "
        "less precise updates.", label="Full fp16 weights", group=TRAINING, advanced=True,
        applies=when("mixed_precision", "fp16"))
    full_bf16: bool = param(
        False, "Keep the trained weights themselves in bf16 (needs mixed_precision bf16).",
        label="Full bf16 weights", group=TRAINING, advanced=True, applies=when("mixed_precision", "bf16"))
    gradient_checkpointing: bool = param(False, "Trade compute for memory (slower steps, much less memory).",
                                         label="Gradient checkpointing", group=TRAINING)
    train_unet: bool = param(True, "Train the U-Net.", label="Train the U-Net", group=TRAINING, advanced=True)
    train_text_encoder: bool = param(
        False, "Train the text encoder too (or alone, with train_unet off).", label="Train text encoder",
        group=TRAINING)
    learning_rate_te: float | None = param(
        None, "Learning rate of the text encoder (empty: same as learning_rate; 0: keep it frozen; often lower, "
        "e.g. 1e-6).", label="Text encoder LR", group=TRAINING, applies=TRAINS_TE, ge=0)
    learning_rate_te1: float | None = param(
        None, "SDXL: learning rate of text encoder 1 (CLIP ViT-L) (empty: as learning_rate_te; 0: keep it "
        "frozen).", label="Text encoder 1 LR", group=TRAINING, advanced=True,
        applies=(TRAINS_TE, when("model_arch", "sdxl")), ge=0)
    learning_rate_te2: float | None = param(
        None, "SDXL: learning rate of text encoder 2 (OpenCLIP bigG) (empty: as learning_rate_te; 0: keep it "
        "frozen).", label="Text encoder 2 LR", group=TRAINING, advanced=True,
        applies=(TRAINS_TE, when("model_arch", "sdxl")), ge=0)
    stop_text_encoder_training: float = param(
        0, "Freeze the text encoder after this many steps, or this fraction of the run when below 1 "
        "(0: train it to the end).", label="Stop text encoder after", group=TRAINING, advanced=True,
        applies=TRAINS_TE, ge=0)
    unet_blocks: list[Literal["down", "mid", "up"]] = param(
        [], "Full fine-tune: train only these U-Net block groups (empty: the whole U-Net). The input/output "
        "layers and the time embedding then stay frozen.", label="U-Net blocks trained", group=TRAINING,
        advanced=True, applies=(when("train_unet", True), when("train_lora", False)))
    use_ema: bool = param(
        False, "Keep an exponential moving average (EMA) of the trained weights: smoother results, one more "
        "copy of the weights in memory.", label="Use EMA", group=TRAINING)
    ema_decay: float = param(
        0.9999, "EMA decay per update (warmed up as min(decay, (1+n)/(10+n)) at update n).", label="EMA decay",
        group=TRAINING, advanced=True, applies=EMA, gt=0, lt=1)
    ema_update_every: int = param(1, "Update the EMA every N steps.", label="EMA update interval", group=TRAINING,
                                  advanced=True, applies=EMA, ge=1)
    ema_on_cpu: bool = param(False, "Keep the EMA in CPU memory (saves GPU memory, slower updates).",
                             label="EMA on CPU", group=TRAINING, advanced=True, applies=EMA)
    ema_save: Literal["alongside", "instead"] = param(
        "alongside", "alongside: save the EMA weights as <output_name>-ema next to the raw ones; instead: the "
        "saved model (and samples, validation) use the EMA weights.", label="EMA saving", group=TRAINING,
        advanced=True, applies=EMA)
    seed: int = param(42, "Random seed (same seed, same run).", label="Seed", group=TRAINING)
    log_every_n_steps: int = param(1, "Report loss and learning rate every N steps.", label="Log every N steps",
                                   group=TRAINING, advanced=True, ge=1)

    def text_encoder_rates(self, arch: str) -> dict[str, float]:
        """Learning rate of each text encoder a model of `arch` trains ({} with train_text_encoder off).
        SD 1/2: its one encoder at learning_rate_te; SDXL: each at learning_rate_te1 / _te2. An empty
        rate is the one above it (te1/te2 -> learning_rate_te -> learning_rate); 0 leaves that encoder
        frozen (absent)."""
        if not self.train_text_encoder:
            return {}
        rate = self.learning_rate if self.learning_rate_te is None else self.learning_rate_te
        own = {"text_encoder": self.learning_rate_te1, "text_encoder_2": self.learning_rate_te2} \
            if arch == "sdxl" else {"text_encoder": None}
        rates = {part: rate if value is None else value for part, value in own.items()}
        return {part: value for part, value in rates.items() if value != 0}

    @model_validator(mode="after")
    def _check_trained_parts(self):
        if not (self.train_unet or self.train_text_encoder):
            raise ValueError("nothing to train: turn on train_unet or train_text_encoder (or both)")
        if self.train_lora and not self.train_unet:
            raise ValueError("train_lora adapts the U-Net (and the text encoder with train_text_encoder): turn on "
                             "train_unet")
        if self.train_lora and self.unet_blocks:
            raise ValueError("unet_blocks and train_lora cannot be used together (choose lora_targets instead)")
        if self.unet_blocks and not self.train_unet:
            raise ValueError("unet_blocks chooses U-Net blocks to train, but train_unet is off")
        if self.stop_text_encoder_training and not (self.train_text_encoder and self.train_unet):
            raise ValueError("stop_text_encoder_training needs train_text_encoder and train_unet both on "
                             "(it freezes the text encoder while the U-Net goes on)")
        if self.train_text_encoder and not self.text_encoder_rates("sdxl"):  # SD 1/2: core.train.start_checks
            zeros = [name for name in ("learning_rate_te", "learning_rate_te1", "learning_rate_te2")
                     if getattr(self, name) == 0]
            raise ValueError(f"every text encoder stays frozen ({', '.join(zeros)} 0; an empty one is as "
                             "learning_rate_te): turn off train_text_encoder instead")
        if self.full_fp16 and self.full_bf16:
            raise ValueError("full_fp16 and full_bf16 cannot be used together")
        for flag, precision in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
            if getattr(self, flag) and self.mixed_precision != precision:
                raise ValueError(f"{flag} needs mixed_precision {precision} (it is {self.mixed_precision})")
        return self
