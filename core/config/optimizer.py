"""The trainer's "Optimizer & schedule" and "Noise & loss" sections."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from core.config.choices import HuberSchedule, LrSchedulerName, OptimizerName
from core.config.conditions import when, when_not
from core.config.schema import JobConfig, param

OPTIMIZER = "Optimizer & schedule"
NOISE = "Noise & loss"


class OptimizerSettings(JobConfig):
    """The optimizer and how the learning rate changes over the run."""
    optimizer_type: OptimizerName = param(
        "AdamW", "Optimizer. 8bit variants (bitsandbytes) use less memory; Adafactor (relative step by "
        "default) and Prodigy set their own step size (use learning_rate 1 with Prodigy).", label="Optimizer",
        group=OPTIMIZER, essential=True)
    optimizer_args: list[str] = param(
        [], "Extra optimizer arguments, one key=value per line (e.g. weight_decay=0.01, betas=(0.9,0.99)).",
        label="Optimizer arguments", group=OPTIMIZER, advanced=True)
    max_grad_norm: float = param(1.0, "Clip gradients to this norm (0: no clipping).", label="Gradient clipping",
                                 group=OPTIMIZER, advanced=True, ge=0)
    fused_backward_pass: bool = param(
        False, "Full fine-tuning with Adafactor: update each weight as soon as its gradient is computed and free "
        "that gradient, so the gradients of the whole model never exist at once (much less memory: sd-scripts "
        "reports SDXL in bf16 from about 24 GB to 10 GB). Same result as without it. Needs "
        "gradient_accumulation_steps 1, one process, mixed_precision no or bf16, no LoRA; max_grad_norm then "
        "clips each weight's gradient on its own (as sd-scripts).", label="Fused backward pass", group=OPTIMIZER,
        advanced=True, applies=(when("optimizer_type", "Adafactor"), when("train_lora", False)))
    lr_scheduler: LrSchedulerName = param("constant", "How the learning rate (lr) changes over the run.",
                                          label="LR schedule", group=OPTIMIZER)
    lr_warmup_steps: float = param(
        0, "Warm-up: steps, or a fraction of the run when below 1 (0.05 = the first 5%).", label="Warm-up steps",
        group=OPTIMIZER, applies=when_not("lr_scheduler", "constant"), ge=0)
    lr_decay_steps: int = param(
        0, "cosine: hold the learning rate after warm-up, then decay over the last N steps (0: decay all along).",
        label="Cosine decay steps", group=OPTIMIZER, advanced=True, applies=when("lr_scheduler", "cosine"), ge=0)
    lr_scheduler_num_cycles: int = param(
        1, "cosine_with_restarts: number of cycles.", label="Restart cycles", group=OPTIMIZER, advanced=True,
        applies=when("lr_scheduler", "cosine_with_restarts"), ge=1)
    lr_scheduler_power: float = param(
        1.0, "polynomial: power of the decay.", label="Polynomial power", group=OPTIMIZER, advanced=True,
        applies=when("lr_scheduler", "polynomial"), gt=0)
    lr_drops: list[int] = param(
        [], "Divide the learning rate by 10 at these percentages of the run (e.g. 75).", label="LR drops (%)",
        group=OPTIMIZER, advanced=True)

    @model_validator(mode="after")
    def _consistent_schedule(self):
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise ValueError("lr_warmup_steps needs an lr_scheduler other than constant "
                             "(constant_with_warmup, for example)")
        if any(not 0 < d < 100 for d in self.lr_drops):
            raise ValueError(f"lr_drops are percentages of the run between 0 and 100, not {self.lr_drops}")
        if self.optimizer_args:  # reading the optimizer's signature imports it (bitsandbytes: seconds)
            self._check_optimizer_args()
        return self

    def _check_optimizer_args(self) -> None:
        from core.train.optimizers import accepted_args, parse_optimizer_args

        unknown = set(parse_optimizer_args(self.optimizer_args)) - set(accepted_args(self.optimizer_type))
        if unknown:
            raise ValueError(f"optimizer_args {', '.join(sorted(unknown))} not accepted by {self.optimizer_type}; "
                             f"it accepts: {', '.join(accepted_args(self.optimizer_type))}")


class NoiseLossSettings(JobConfig):
    """The loss and its weighting, the noise added to the latents and the timesteps trained."""
    loss_type: Literal["l2", "huber", "smooth_l1"] = param(
        "l2", "Loss: l2 (mean squared error), or huber / smooth_l1 (less sensitive to outliers).",
        label="Loss type", group=NOISE)
    huber_c: float = param(0.1, "huber / smooth_l1: the c parameter.", label="Huber c", group=NOISE,
                           applies=when("loss_type", "huber", "smooth_l1"), gt=0)
    huber_schedule: HuberSchedule = param(
        "snr", "huber / smooth_l1: how c changes with the timestep.", label="Huber schedule", group=NOISE,
        applies=when("loss_type", "huber", "smooth_l1"))
    min_snr_gamma: float = param(0.0, "Min-SNR loss weighting gamma (5 typical; 0: off).", label="Min-SNR gamma",
                                 group=NOISE, ge=0)
    debiased_estimation_loss: bool = param(False, "Debiased estimation loss weighting.",
                                           label="Debiased estimation", group=NOISE, advanced=True)
    noise_offset: float = param(0.0, "Offset noise strength (0.05-0.1 helps very dark/bright images).",
                                label="Noise offset", group=NOISE, ge=0, le=1)
    noise_offset_random_strength: bool = param(
        False, "Use a random offset between 0 and noise_offset per image.", label="Random offset strength",
        group=NOISE, advanced=True, applies=when("noise_offset"))
    multires_noise_iterations: int = param(
        0, "Multi-resolution (pyramid) noise levels (6-10 typical; 0: off).", label="Pyramid noise levels",
        group=NOISE, advanced=True, ge=0, le=16)
    multires_noise_discount: float = param(
        0.3, "Weight of each coarser pyramid level.", label="Pyramid noise discount", group=NOISE, advanced=True,
        applies=when("multires_noise_iterations"), ge=0, le=1)
    ip_noise_gamma: float = param(0.0, "Input perturbation noise (0.1 typical; 0: off).",
                                  label="Input perturbation", group=NOISE, advanced=True, ge=0, le=1)
    ip_noise_gamma_random_strength: bool = param(
        False, "Use a random strength between 0 and ip_noise_gamma.", label="Random perturbation strength",
        group=NOISE, advanced=True, applies=when("ip_noise_gamma"))
    zero_terminal_snr: bool = param(
        False, "Rescale the noise schedule so the last step is pure noise (best with v-prediction).",
        label="Zero terminal SNR", group=NOISE, advanced=True)
    min_timestep: int = param(0, "Lowest timestep trained.", label="Min timestep", group=NOISE, advanced=True,
                              ge=0, le=999)
    max_timestep: int = param(1000, "Timesteps trained are below this.", label="Max timestep", group=NOISE,
                              advanced=True, ge=1, le=1000)

    @model_validator(mode="after")
    def _consistent_noise(self):
        if self.min_timestep >= self.max_timestep:
            raise ValueError(f"min_timestep ({self.min_timestep}) must be below max_timestep ({self.max_timestep})")
        if self.noise_offset and self.multires_noise_iterations:
            raise ValueError("noise_offset and multires_noise_iterations cannot be used together (as in kohya)")
        return self
