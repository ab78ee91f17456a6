"""Parameters of the trainer (job `train`), with kohya sd-scripts' names and defaults."""
from __future__ import annotations

from typing import Literal

from pydantic import ValidationInfo, model_validator

from core.config.choices import HuberSchedule, LrSchedulerName, OptimizerName
from core.config.dataset import BucketSettings, CaptionSettings
from core.config.dreambooth import DreamBoothSettings
from core.config.launch import LaunchSettings
from core.config.models import LatentSettings, ModelSettings, PromptSettings, SaveSettings
from core.config.schema import fields_only, param
from core.config.train_eval import SampleSettings, ValidationSettings


# The names the trainer implements (core/train/ reads them from here, with typing.get_args).
class TrainConfig(LaunchSettings, ValidationSettings, SampleSettings, LatentSettings, PromptSettings, CaptionSettings,
                  SaveSettings, ModelSettings, DreamBoothSettings, BucketSettings):  # reverse display order
    """Fine-tune a Stable Diffusion model (SD 1.x / 2.x / XL) on a captioned dataset."""
    v_parameterization: bool = param(
        False, "The model predicts v (SD 2.x 768-v). Detected from the checkpoint when it says so.",
        group="Model")
    save_every_n_epochs: int = param(0, "Also save every N epochs (0: off).", group="Output", ge=0)
    save_every_n_steps: int = param(0, "Also save every N steps (0: off).", group="Output", ge=0)
    save_last_n_epochs: int = param(
        0, "Keep only the last N epoch saves (0: keep all).", group="Output", advanced=True, ge=0)
    save_last_n_steps: int = param(
        0, "Keep only the last N step saves (0: keep all).", group="Output", advanced=True, ge=0)
    save_state: bool = param(
        False, "Save the full training state with each save, so a run can be resumed exactly.",
        group="Output")
    resume: str = param("", "Resume from a saved training state folder.", widget="dir", group="Output")

    shuffle_caption: bool = param(False, "Shuffle the comma-separated tags of each caption.",
                                  group="Captions")
    keep_tokens: int = param(0, "Keep the first N tags in place when shuffling.", group="Captions", ge=0)
    keep_tokens_separator: str = param(
        "", "Marker that splits a caption into kept and shuffled tags (kohya; \"|||\" is common): tags "
        "before it stay in front, tags after a second marker stay at the end; replaces keep_tokens for "
        "captions that contain it. Only used when shuffling or dropping tags.", group="Captions")
    caption_prefix: str = param(
        "", "Text added before every caption (joined with a space, before shuffling: it stays with "
        "the first tag).", group="Captions")
    caption_suffix: str = param(
        "", "Text added after every caption (joined with a space, before shuffling: it moves with "
        "the last tag).", group="Captions")
    caption_dropout_rate: float = param(
        0.0, "Chance (0-1) that a sample is trained with an empty caption, so the model also learns "
        "unconditioned (helps classifier-free guidance).", group="Captions", ge=0, le=1)
    caption_tag_dropout_rate: float = param(
        0.0, "Chance (0-1) that each tag is left out of a sample's caption; the kept tags (keep_tokens "
        "or keep_tokens_separator) never are.", group="Captions", ge=0, le=1)
    flip_p: float = param(
        0.5, "Chance (0-1) that a sample is horizontally flipped; needs flip_aug (which caches the "
        "flipped latents).", group="Captions", ge=0, le=1)
    cache_latents: bool = param(
        True, "Train from the latent cache (built first when missing or stale); off: encode each batch.",
        group="Cache")
    cache_text_encoder_outputs: bool = param(
        False, "Encode every caption once before training and free the text encoder's GPU memory. Needs "
        "static captions: no shuffle_caption, no caption_tag_dropout_rate, text encoder not trained.",
        group="Cache")

    train_unet: bool = param(True, "Train the U-Net.", group="What is trained")
    train_text_encoder: bool = param(
        False, "Train the text encoder too (or alone, with train_unet off).", group="What is trained")
    learning_rate_te: float | None = param(
        None, "Learning rate of the text encoder when train_text_encoder is on (empty: same as learning_rate; "
        "0: keep it frozen; often lower, e.g. 1e-6).", group="What is trained", ge=0)
    learning_rate_te1: float | None = param(
        None, "SDXL: learning rate of text encoder 1 (CLIP ViT-L) when train_text_encoder is on (empty: as "
        "learning_rate_te; 0: keep it frozen).", group="What is trained", advanced=True, ge=0)
    learning_rate_te2: float | None = param(
        None, "SDXL: learning rate of text encoder 2 (OpenCLIP bigG) when train_text_encoder is on (empty: as "
        "learning_rate_te; 0: keep it frozen).", group="What is trained", advanced=True, ge=0)
    unet_blocks: list[Literal["down", "mid", "up"]] = param(
        [], "Train only these U-Net block groups (empty: the whole U-Net). The input/output layers and "
        "the time embedding then stay frozen.", group="What is trained", advanced=True)
    stop_text_encoder_training: float = param(
        0, "Freeze the text encoder after this many steps, or this fraction of the run when below 1 "
        "(0: train it to the end).", group="What is trained", advanced=True, ge=0)
    train_lora: bool = param(
        False, "Train a LoRA (small adapter file, kohya format by default) instead of the model's own weights.",
        group="LoRA")
    network_dim: int = param(16, "LoRA rank.", group="LoRA", ge=1, le=1024)
    network_alpha: float = param(8.0, "LoRA alpha (the update is scaled by alpha / rank).", group="LoRA", gt=0)
    network_dropout: float = param(0.0, "Dropout inside the LoRA layers.", group="LoRA", advanced=True, ge=0, lt=1)
    lora_targets: Literal["attention", "attention_mlp", "all_linear_conv"] = param(
        "attention", "Layers that get an adapter: attention only; attention and MLP; every linear and conv layer "
        "(LoCon-like).", group="LoRA")
    lora_save_format: Literal["kohya", "diffusers"] = param(
        "kohya", "kohya: loads in AUTOMATIC1111 and ComfyUI; diffusers: for load_lora_weights. Always one "
        ".safetensors file.", group="LoRA")
    use_ema: bool = param(
        False, "Keep an exponential moving average (EMA) of the trained weights: smoother results, one more "
        "copy of the weights in memory.", group="What is trained")
    ema_decay: float = param(
        0.9999, "EMA decay per update (warmed up as min(decay, (1+n)/(10+n)) at update n).",
        group="What is trained", advanced=True, gt=0, lt=1)
    ema_update_every: int = param(1, "Update the EMA every N steps.", group="What is trained",
                                  advanced=True, ge=1)
    ema_on_cpu: bool = param(False, "Keep the EMA in CPU memory (saves GPU memory, slower updates).",
                             group="What is trained", advanced=True)
    ema_save: Literal["alongside", "instead"] = param(
        "alongside", "alongside: save the EMA weights as <output_name>-ema next to the raw ones; instead: the "
        "saved model (and samples, validation) use the EMA weights.", group="What is trained", advanced=True)

    max_train_steps: int = param(1600, "Steps to train (ignored when max_train_epochs is set).",
                                 group="Training", ge=1)
    max_train_epochs: int = param(0, "Epochs to train (0: use max_train_steps).", group="Training", ge=0)
    train_batch_size: int = param(1, "Images per step (per GPU).", group="Training", ge=1)
    gradient_accumulation_steps: int = param(1, "Steps whose gradients are summed before an update.",
                                             group="Training", ge=1)
    learning_rate: float = param(2e-6, "Learning rate.", group="Training", gt=0)
    scale_lr: bool = param(False, "Multiply the learning rate by sqrt(batch size x accumulation steps).",
                           group="Training", advanced=True)
    optimizer_type: OptimizerName = param(
        "AdamW", "Optimizer. 8bit variants (bitsandbytes) use less memory; Adafactor (relative step by "
        "default) and Prodigy set their own step size (use learning_rate 1 with Prodigy).", group="Optimizer")
    optimizer_args: list[str] = param(
        [], "Extra optimizer arguments, one key=value per line (e.g. weight_decay=0.01, betas=(0.9,0.99)).",
        group="Optimizer", advanced=True)
    max_grad_norm: float = param(1.0, "Clip gradients to this norm (0: no clipping).", group="Optimizer",
                                 advanced=True, ge=0)
    lr_scheduler: LrSchedulerName = param("constant", "How the learning rate changes over the run.",
                                          group="Optimizer")
    lr_warmup_steps: float = param(
        0, "Warm-up: steps, or a fraction of the run when below 1 (0.05 = the first 5%).", group="Optimizer", ge=0)
    lr_decay_steps: int = param(
        0, "cosine: hold the learning rate after warm-up, then decay over the last N steps (0: decay all along).",
        group="Optimizer", advanced=True, ge=0)
    lr_scheduler_num_cycles: int = param(1, "cosine_with_restarts: number of cycles.", group="Optimizer",
                                         advanced=True, ge=1)
    lr_scheduler_power: float = param(1.0, "polynomial: power of the decay.", group="Optimizer",
                                      advanced=True, gt=0)
    lr_drops: list[int] = param(
        [], "Divide the learning rate by 10 at these percentages of the run (e.g. 75).", group="Optimizer",
        advanced=True)

    zero_terminal_snr: bool = param(
        False, "Rescale the noise schedule so the last step is pure noise (best with v-prediction).",
        group="Noise & loss", advanced=True)
    noise_offset: float = param(0.0, "Offset noise strength (0.05-0.1 helps very dark/bright images).",
                                group="Noise & loss", advanced=True, ge=0, le=1)
    noise_offset_random_strength: bool = param(
        False, "Use a random offset between 0 and noise_offset per image.", group="Noise & loss", advanced=True)
    multires_noise_iterations: int = param(
        0, "Multi-resolution (pyramid) noise levels (6-10 typical; 0: off).", group="Noise & loss",
        advanced=True, ge=0, le=16)
    multires_noise_discount: float = param(0.3, "Weight of each coarser pyramid level.", group="Noise & loss",
                                           advanced=True, ge=0, le=1)
    ip_noise_gamma: float = param(0.0, "Input perturbation noise (0.1 typical; 0: off).", group="Noise & loss",
                                  advanced=True, ge=0, le=1)
    ip_noise_gamma_random_strength: bool = param(
        False, "Use a random strength between 0 and ip_noise_gamma.", group="Noise & loss", advanced=True)
    min_timestep: int = param(0, "Lowest timestep trained.", group="Noise & loss", advanced=True, ge=0, le=999)
    max_timestep: int = param(1000, "Timesteps trained are below this.", group="Noise & loss", advanced=True,
                              ge=1, le=1000)
    loss_type: Literal["l2", "huber", "smooth_l1"] = param(
        "l2", "Loss: l2 (mean squared error), or huber / smooth_l1 (less sensitive to outliers).",
        group="Noise & loss", advanced=True)
    huber_c: float = param(0.1, "huber / smooth_l1: the c parameter.", group="Noise & loss", advanced=True, gt=0)
    huber_schedule: HuberSchedule = param(
        "snr", "huber / smooth_l1: how c changes with the timestep.", group="Noise & loss", advanced=True)
    min_snr_gamma: float = param(0.0, "Min-SNR loss weighting gamma (5 typical; 0: off).", group="Noise & loss",
                                 advanced=True, ge=0)
    debiased_estimation_loss: bool = param(False, "Debiased estimation loss weighting.", group="Noise & loss",
                                           advanced=True)
    mixed_precision: Literal["no", "fp16", "bf16"] = param(
        "no", "Compute precision (fp16/bf16 on GPUs; no: fp32).", group="Training")
    gradient_checkpointing: bool = param(False, "Trade compute for memory.", group="Training")
    full_fp16: bool = param(
        False, "Keep the trained weights themselves in fp16 (needs mixed_precision fp16): least memory, "
        "less precise updates.", group="Training", advanced=True)
    full_bf16: bool = param(
        False, "Keep the trained weights themselves in bf16 (needs mixed_precision bf16).", group="Training",
        advanced=True)
    seed: int = param(42, "Random seed (same seed, same run).", group="Training")
    log_every_n_steps: int = param(1, "Report loss and learning rate every N steps.", group="Training",
                                   advanced=True, ge=1)

    @model_validator(mode="after")
    def _consistent_training(self, info: ValidationInfo):
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise ValueError("lr_warmup_steps needs an lr_scheduler other than constant "
                             "(constant_with_warmup, for example)")
        if self.min_timestep >= self.max_timestep:
            raise ValueError(f"min_timestep ({self.min_timestep}) must be below max_timestep ({self.max_timestep})")
        if self.noise_offset and self.multires_noise_iterations:
            raise ValueError("noise_offset and multires_noise_iterations cannot be used together (as in kohya)")
        if any(not 0 < d < 100 for d in self.lr_drops):
            raise ValueError(f"lr_drops are percentages of the run between 0 and 100, not {self.lr_drops}")
        self._check_trained_parts()
        if self.optimizer_args and not fields_only(info):  # imports the optimizer (torch, bitsandbytes: seconds)
            self._check_optimizer_args()
        return self

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

    def _check_optimizer_args(self) -> None:
        from core.train.optimizers import accepted_args, parse_optimizer_args

        unknown = set(parse_optimizer_args(self.optimizer_args)) - set(accepted_args(self.optimizer_type))
        if unknown:
            raise ValueError(f"optimizer_args {', '.join(sorted(unknown))} not accepted by {self.optimizer_type}; "
                             f"it accepts: {', '.join(accepted_args(self.optimizer_type))}")

    def _check_trained_parts(self) -> None:
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
        if self.cache_text_encoder_outputs:
            dynamic = [name for name, on in (("shuffle_caption", self.shuffle_caption),
                                             ("caption_tag_dropout_rate", self.caption_tag_dropout_rate > 0),
                                             ("train_text_encoder", self.train_text_encoder)) if on]
            if dynamic:
                raise ValueError(f"cache_text_encoder_outputs needs static captions and a frozen text encoder; "
                                 f"turn off {', '.join(dynamic)} or the cache")
