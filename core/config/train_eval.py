"""Trainer parameters that watch a run: sample images, validation loss, auto-stop."""
from __future__ import annotations

from pydantic import model_validator

from core.config.conditions import any_of, when
from core.config.schema import JobConfig, param

WATCH = "Samples & validation"
HAS_PROMPTS = any_of(when("sample_prompt"), when("sample_prompts"))
VALIDATES = any_of(when("validation_split"), when("validation_data_dir"))


class SampleSettings(JobConfig):
    """Sample images during training, from a prompt typed here and/or a kohya-style prompt file
    (core.train.samples.run_prompts reads both)."""
    sample_prompt: str = param(
        "", "A prompt to sample, in the prompt file's syntax: `a cat --n blurry --w 512 --s 28` (negative prompt, "
        "width, height, steps, CFG scale, seed); sampled after the prompt file's prompts, if any.",
        label="Sample prompt", group=WATCH, essential=True)
    sample_prompts: str = param(
        "", "Prompt file, one prompt per line in kohya syntax: `a cat --n blurry --w 512 --h 768 --s 28 "
        "--l 7 --d 42` (negative prompt, width, height, steps, CFG scale, seed). Samples are made at the "
        "end and every N steps/epochs below, into the run folder's samples/.", label="Prompt file",
        widget="file", group=WATCH)
    sample_every_n_steps: int = param(0, "Also sample every N steps (0: off).", label="Sample every N steps",
                                      group=WATCH, applies=HAS_PROMPTS, ge=0)
    sample_every_n_epochs: int = param(0, "Also sample every N epochs (0: off).", label="Sample every N epochs",
                                       group=WATCH, applies=HAS_PROMPTS, ge=0)
    sample_at_first: bool = param(False, "Also sample before training starts.", label="Sample before training",
                                  group=WATCH, applies=HAS_PROMPTS)
    sample_clip_model: str = param(
        "", "Optional local CLIP model folder (e.g. openai/clip-vit-base-patch32 from the hub) to score how "
        "well samples match their prompts (clip_score, 0-100).", label="CLIP scoring model", widget="dir",
        group=WATCH, advanced=True, applies=HAS_PROMPTS)

    @model_validator(mode="after")
    def _prompts_for_sampling(self):
        if (self.sample_every_n_steps or self.sample_every_n_epochs or self.sample_at_first
                or self.sample_clip_model) and not (self.sample_prompt.strip() or self.sample_prompts.strip()):
            raise ValueError("sampling options are set but there is no prompt: set sample_prompt or "
                             "sample_prompts (the prompt file)")
        return self


class ValidationSettings(JobConfig):
    """A held-out validation loss (fixed noise and timesteps, so the curve is comparable) and
    auto-stop on its plateau."""
    validation_split: float = param(
        0.0, "Fraction (0-0.5) of the images held out for validation, chosen with validation_seed.",
        label="Validation split", group=WATCH, ge=0, le=0.5)
    validation_data_dir: str = param(
        "", "Or a separate folder of captioned validation images (instead of validation_split).",
        label="Validation folder", widget="dir", group=WATCH)
    validation_seed: int = param(0, "Seed of the split and of the fixed validation noise.", label="Validation seed",
                                 group=WATCH, advanced=True, applies=VALIDATES)
    validate_every_n_steps: int = param(0, "Compute the validation loss every N steps (0: off).",
                                        label="Validate every N steps", group=WATCH, applies=VALIDATES, ge=0)
    validate_every_n_epochs: int = param(0, "Compute the validation loss every N epochs (0: off).",
                                         label="Validate every N epochs", group=WATCH, applies=VALIDATES, ge=0)
    auto_stop: bool = param(
        False, "Reduce the learning rate when the validation loss stops improving (early stopping), stop when it "
        "still does not; saves the best model as <output_name>-best.", label="Auto-stop on plateau", group=WATCH,
        applies=VALIDATES)
    auto_stop_patience: int = param(
        3, "Validations without improvement before the learning rate is reduced (or the run stops).",
        label="Plateau patience", group=WATCH, advanced=True, applies=(VALIDATES, when("auto_stop", True)), ge=1)
    auto_stop_min_delta: float = param(
        0.0, "Smallest drop of the validation loss that counts as an improvement.", label="Minimum improvement",
        group=WATCH, advanced=True, applies=(VALIDATES, when("auto_stop", True)), ge=0)
    auto_stop_lr_factor: float = param(
        0.5, "Factor applied to the learning rate on a plateau.", label="Plateau LR factor", group=WATCH,
        advanced=True, applies=(VALIDATES, when("auto_stop", True)), gt=0, lt=1)
    auto_stop_lr_reductions: int = param(
        2, "Learning-rate reductions before a plateau stops the run (0: stop at the first plateau).",
        label="LR reductions before stop", group=WATCH, advanced=True,
        applies=(VALIDATES, when("auto_stop", True)), ge=0)

    @property
    def validates(self) -> bool:
        return bool(self.validation_split or self.validation_data_dir.strip())

    @model_validator(mode="after")
    def _consistent_validation(self):
        if self.validation_split and self.validation_data_dir.strip():
            raise ValueError("use validation_split or validation_data_dir, not both")
        every = self.validate_every_n_steps or self.validate_every_n_epochs
        if every and not self.validates:
            raise ValueError("validate_every_n_steps/epochs need validation images: set validation_split "
                             "or validation_data_dir")
        if self.auto_stop and not every:
            raise ValueError("auto_stop needs a validation loss: set validate_every_n_steps or "
                             "validate_every_n_epochs (and validation_split or validation_data_dir)")
        return self
