"""Parameters of the trainer (job `train`), with kohya sd-scripts' names and defaults."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from core.config.dataset import BucketSettings, CaptionSettings
from core.config.models import LatentSettings, ModelSettings
from core.config.schema import param


class TrainConfig(LatentSettings, CaptionSettings, ModelSettings, BucketSettings):  # reverse display order
    """Fine-tune a Stable Diffusion model (SD 1.x / 2.x) on a captioned dataset."""
    v_parameterization: bool = param(
        False, "The model predicts v (SD 2.x 768-v). Detected from the checkpoint when it says so.",
        group="Model")
    output_dir: str = param("", "Folder for the trained model files.", widget="dir", min_length=1,
                            group="Output")
    output_name: str = param("model", "File name of the trained model, without extension.", group="Output",
                             min_length=1, pattern=r"^[^/\\:*?\"<>|]+$")
    save_model_as: Literal["safetensors", "diffusers"] = param(
        "safetensors", "Single .safetensors file (A1111/ComfyUI) or a diffusers folder.", group="Output")
    save_precision: Literal["fp32", "fp16", "bf16"] = param(
        "fp16", "Precision of the saved weights.", group="Output")
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
    clip_skip: int = param(1, "Use the text encoder's output N layers from the end (2 for many anime "
                           "models).", group="Captions", ge=1, le=12)
    max_token_length: Literal[75, 150, 225] = param(
        75, "Longest caption in tokens, in chunks of 75 as kohya does.", group="Captions")
    cache_latents: bool = param(
        True, "Train from the latent cache (built first when missing or stale); off: encode each batch.",
        group="Cache")

    max_train_steps: int = param(1600, "Steps to train (ignored when max_train_epochs is set).",
                                 group="Training", ge=1)
    max_train_epochs: int = param(0, "Epochs to train (0: use max_train_steps).", group="Training", ge=0)
    train_batch_size: int = param(1, "Images per step (per GPU).", group="Training", ge=1)
    gradient_accumulation_steps: int = param(1, "Steps whose gradients are summed before an update.",
                                             group="Training", ge=1)
    learning_rate: float = param(2e-6, "Learning rate.", group="Training", gt=0)
    optimizer_type: Literal["AdamW", "AdamW8bit"] = param(
        "AdamW", "Optimizer (AdamW8bit uses bitsandbytes and less memory).", group="Training")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = param(
        "constant", "How the learning rate changes over the run.", group="Training")
    lr_warmup_steps: int = param(0, "Steps of linear warm-up.", group="Training", ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = param(
        "no", "Compute precision (fp16/bf16 on GPUs; no: fp32).", group="Training")
    gradient_checkpointing: bool = param(False, "Trade compute for memory.", group="Training")
    seed: int = param(42, "Random seed (same seed, same run).", group="Training")
    log_every_n_steps: int = param(1, "Report loss and learning rate every N steps.", group="Training",
                                   advanced=True, ge=1)

    @model_validator(mode="after")
    def _consistent_training(self):
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise ValueError("lr_warmup_steps needs lr_scheduler constant_with_warmup, cosine or linear")
        return self
