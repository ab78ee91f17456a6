"""Parameters of the trainer (job `train`), with kohya sd-scripts' names and defaults.

TrainConfig combines one settings class per section of the Training page; pydantic lists the
fields of the last base first, so the bases are written in reverse display order: Training, Model,
Data & captions, Optimizer & schedule, Noise & loss, Saving, Samples & validation, LoRA,
DreamBooth, Multi-GPU."""
from __future__ import annotations

from pydantic import model_validator

from core.config.conditions import any_of, when
from core.config.dataset import DATA, BucketSettings, CaptionSettings, MaskSettings
from core.config.dreambooth import DreamBoothSettings
from core.config.launch import LaunchSettings
from core.config.lora import LoraSettings
from core.config.lycoris import LycorisSettings
from core.config.models import SAVING, LatentSettings, ModelSettings, PromptSettings, SaveSettings, VaeSettings
from core.config.optimizer import NoiseLossSettings, OptimizerSettings
from core.config.schema import param
from core.config.subsets import SubsetSettings
from core.config.train_eval import SampleSettings, ValidationSettings
from core.config.training import TrainingSettings

TAGS_TOUCHED = any_of(when("shuffle_caption", True), when("caption_tag_dropout_rate"))


class TrainModelSettings(VaeSettings, PromptSettings, ModelSettings):  # reverse display order
    """The base model as the trainer reads it."""
    v_parameterization: bool = param(
        False, "The model predicts v (SD 2.x 768-v, v-prediction fine-tunes). Detected from the checkpoint when "
        "it says so.", label="V-prediction", group="Model", advanced=True)


class TrainDataSettings(CaptionSettings):
    """How each training sample's caption and image are varied, and what is cached before training."""
    shuffle_caption: bool = param(False, "Shuffle the comma-separated tags of each caption.", label="Shuffle tags",
                                  group=DATA)
    keep_tokens: int = param(0, "Keep the first N tags in place when shuffling or dropping tags.",
                             label="Keep first N tags", group=DATA, applies=TAGS_TOUCHED, ge=0)
    keep_tokens_separator: str = param(
        "", "Marker that splits a caption into kept and shuffled tags (kohya; \"|||\" is common): tags "
        "before it stay in front, tags after a second marker stay at the end; replaces keep_tokens for "
        "captions that contain it.", label="Keep-tags marker", group=DATA, advanced=True, applies=TAGS_TOUCHED)
    caption_prefix: str = param(
        "", "Text added before every caption (joined with a space, before shuffling: it stays with "
        "the first tag).", label="Caption prefix", group=DATA)
    caption_suffix: str = param(
        "", "Text added after every caption (joined with a space, before shuffling: it moves with "
        "the last tag).", label="Caption suffix", group=DATA, advanced=True)
    caption_dropout_rate: float = param(
        0.0, "Chance (0-1) that a sample is trained with an empty caption, so the model also learns "
        "unconditioned (helps classifier-free guidance).", label="Caption dropout", group=DATA, advanced=True,
        ge=0, le=1)
    caption_tag_dropout_rate: float = param(
        0.0, "Chance (0-1) that each tag is left out of a sample's caption; the kept tags (keep_tokens "
        "or keep_tokens_separator) never are.", label="Tag dropout", group=DATA, advanced=True, ge=0, le=1)
    flip_p: float = param(
        0.5, "Chance (0-1) that a sample is horizontally flipped (with flip_aug).", label="Flip chance", group=DATA,
        advanced=True, applies=when("flip_aug", True), ge=0, le=1)
    cache_latents: bool = param(
        True, "Train from the latent cache (built first when missing or stale); off: encode each batch.",
        label="Cache latents", group=DATA)
    cache_text_encoder_outputs: bool = param(
        False, "Encode every caption once before training and free the text encoder's GPU memory. Needs "
        "static captions: no shuffle_caption, no caption_tag_dropout_rate, text encoder not trained.",
        label="Cache text encodings", group=DATA, advanced=True)


class TrainSaveSettings(SaveSettings):
    """Saves during the run, training states and resuming."""
    save_every_n_epochs: int = param(0, "Also save every N epochs (0: off).", label="Save every N epochs",
                                     group=SAVING, ge=0)
    save_every_n_steps: int = param(0, "Also save every N steps (0: off).", label="Save every N steps",
                                    group=SAVING, ge=0)
    save_last_n_epochs: int = param(
        0, "Keep only the last N epoch saves (0: keep all).", label="Epoch saves kept", group=SAVING, advanced=True,
        applies=when("save_every_n_epochs"), ge=0)
    save_last_n_steps: int = param(
        0, "Keep only the last N step saves (0: keep all).", label="Step saves kept", group=SAVING, advanced=True,
        applies=when("save_every_n_steps"), ge=0)
    save_state: bool = param(
        False, "Save the full training state with each save, so a run can be resumed exactly.",
        label="Save training state", group=SAVING)
    resume: str = param("", "Resume from a saved training state folder.", label="Resume from state", widget="dir",
                        group=SAVING)


class TrainConfig(LaunchSettings, DreamBoothSettings, LycorisSettings, LoraSettings, ValidationSettings, SampleSettings,
                  TrainSaveSettings, NoiseLossSettings, OptimizerSettings, MaskSettings, LatentSettings, TrainDataSettings,
                  SubsetSettings, BucketSettings, TrainModelSettings, TrainingSettings):  # reverse display order
    """Fine-tune a Stable Diffusion model (SD 1.x / 2.x / XL) on a captioned dataset."""

    @model_validator(mode="after")
    def _static_captions_for_the_cache(self):
        if self.cache_text_encoder_outputs:
            dynamic = [name for name, on in (("shuffle_caption", self.shuffle_caption),
                                             ("caption_tag_dropout_rate", self.caption_tag_dropout_rate > 0),
                                             ("train_text_encoder", self.train_text_encoder)) if on]
            if dynamic:
                raise ValueError(f"cache_text_encoder_outputs needs static captions and a frozen text encoder; "
                                 f"turn off {', '.join(dynamic)} or the cache")
        return self
