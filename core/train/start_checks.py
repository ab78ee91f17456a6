"""What the trainer refuses or warns about before its first step: one set of rules that the trainer
(core/train/loop.py) and the Training tab's *Check settings* (core/train/preflight.py) both apply.

Each rule gives a `Problem` naming the setting to change; the trainer raises `StartRefused` for the
errors and logs the warnings, Check settings lists them, with the same text.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from core.config import ConfigError, TrainConfig
from core.models.loading import existing_path
from core.models.sd import BaseModelKind, inspect_base_model
from core.train.block_lr import block_problems
from core.train.checkpoints import (
    BEST_SUFFIX,
    EMA_SUFFIX,
    check_state_files,
    load_position,
    model_file,
    numbered_saves,
    saved_states,
)
from core.train.fused import FUSED_OPTIMIZERS
from core.train.optimizers import parse_optimizer_args, sets_own_step_size
from core.train.problems import Problem
from core.train.samples import PromptError, clip_folder_problem, run_prompts
from core.train.subset_configs import dataset_subsets, subset_config


class StartRefused(ValueError):
    """The trainer will not start: the settings' errors, one a line."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


def settings_problems(cfg: TrainConfig, processes: int) -> tuple[list[Problem], BaseModelKind | None]:
    """(problems, the base model's kind or None when it is unusable) of the settings, from names,
    file headers and small files only. `processes`: how many processes the run has (the GUI and
    `accelerate launch` start cfg.num_processes)."""
    problems, kind = [], None
    try:
        kind = inspect_base_model(cfg.pretrained_model_name_or_path, cfg.v_parameterization or None)
    except ValueError as exc:
        problems.append(Problem("pretrained_model_name_or_path", str(exc)))
    if kind is not None:
        problems += model_kind_problems(cfg, kind)
    if cfg.vae.strip():
        try:
            existing_path(cfg.vae)
        except ValueError as exc:
            problems.append(Problem("vae", f"{exc}; or leave vae empty to use the model's own"))
    problems += [*output_problems(cfg), *resume_problems(cfg), *sample_problems(cfg), *optimizer_problems(cfg),
                 *fused_backward_problems(cfg, processes)]
    problems += mask_problems(cfg)
    if processes != cfg.num_processes:
        problems.append(Problem("num_processes", f"num_processes is {cfg.num_processes} but this run has {processes} "
                                "process(es): several processes start through `accelerate launch` (the GUI does "
                                "it; copy its command)", "warning"))
    return problems, kind


def mask_problems(cfg: TrainConfig) -> list[Problem]:
    """masked_loss needs masks: each folder of images (the run's, or each dataset subset with its own settings) takes
    them from one source, the mask folder (an existing folder) or the alpha channel, and at least one has a source."""
    if not cfg.masked_loss:
        return []
    configs = [("", cfg)]
    if cfg.uses_subsets:
        try:
            configs = [(f"subset {subset.image_dir}: ", subset_config(cfg, subset)) for subset in dataset_subsets(cfg)]
        except ConfigError:
            return []  # the subsets' own check reports it
    problems = []
    for where, c in configs:
        folder = c.conditioning_data_dir.strip()
        if folder and c.alpha_mask:
            problems.append(Problem("alpha_mask", f"{where}masks come from the mask folder (conditioning_data_dir) "
                                    "or from the alpha channel (alpha_mask), not both: turn alpha_mask off or clear "
                                    "conditioning_data_dir"))
        elif folder and not Path(os.path.expanduser(folder)).is_dir():
            problems.append(Problem("conditioning_data_dir", f"{where}the mask folder {folder} does not exist: choose "
                                    "the folder that holds the masks"))
    if not any(c.conditioning_data_dir.strip() or c.alpha_mask for _, c in configs):
        problems.append(Problem("masked_loss", "masked loss needs masks: set conditioning_data_dir (a folder of mask "
                                "images named as the training images) or turn on alpha_mask (the images' "
                                "transparency)"))
    return problems


def data_problems(cfg: TrainConfig, images: int, validation_images: int | None) -> list[Problem]:
    """Problems of the dataset: `images` usable training images, `validation_images` usable images in
    validation_data_dir (None when there is none)."""
    if not images:
        hint = "" if cfg.recursive else " (turn on recursive to read subfolders)"
        return [Problem("train_data_dir", f"no usable images in {', '.join(cfg.train_data_dir)}{hint}: add images "
                        "(.png, .jpg, .webp, ...)")]
    if validation_images is not None:
        if not validation_images:
            return [Problem("validation_data_dir", f"no usable images in {cfg.validation_data_dir}: add captioned "
                            "images, or clear validation_data_dir")]
        return []
    problem = split_problem(images, cfg.validation_split)
    return [Problem("validation_split", problem)] if problem else []


def split_problem(images: int, fraction: float) -> str | None:
    """Why `images` images cannot be split for validation at `fraction`, None when they can."""
    if fraction and images < 2:
        return (f"a validation split needs at least 2 images (one to train on, one to validate with), found "
                f"{images}: add images, or give a validation_data_dir")
    return None


def class_image_problems(unused: int, total: int) -> list[Problem]:
    """`unused` of the `total` DreamBooth class images left out of every epoch (balanced_repeats)."""
    if not unused:
        return []
    return [Problem("num_class_images", f"{unused} of {total} class images will not be used: an epoch takes as many "
                    "class samples as training samples (images x repeats), as kohya does; lower num_class_images or "
                    "raise the repeats", "warning")]


def refuse_or_warn(problems: list[Problem], warn) -> None:
    """Raise StartRefused with the errors, after `warn(text)` for each warning."""
    for problem in problems:
        if problem.severity == "warning":
            warn(str(problem))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise StartRefused(errors)


def model_kind_problems(cfg: TrainConfig, kind: BaseModelKind) -> list[Problem]:
    """Settings that do not apply to the model's architecture or prediction type."""
    problems = []
    if kind.arch == "sdxl" and cfg.clip_skip > 1:
        problems.append(Problem("clip_skip", "SDXL always uses the penultimate layer of its text encoders: clip_skip "
                                "is ignored (set it to 1)", "warning"))
    problems += block_problems(cfg, kind.arch)
    if kind.arch != "sdxl":
        for name in ("learning_rate_te1", "learning_rate_te2"):
            if getattr(cfg, name) is not None:
                problems.append(Problem(name, f"only SDXL models have two text encoders: {name} is ignored (use "
                                        "learning_rate_te)", "warning"))
    if cfg.train_text_encoder and not cfg.text_encoder_rates(kind.arch):  # SDXL: refused by the config
        problems.append(Problem("learning_rate_te", "learning_rate_te 0 keeps the text encoder frozen: turn off "
                                "train_text_encoder, or leave learning_rate_te empty to train it at learning_rate"))
    if cfg.zero_terminal_snr and not kind.v_prediction:
        problems.append(Problem("zero_terminal_snr", "without v-prediction the last timestep is pure noise, which an "
                                "eps-prediction model cannot denoise; use it with v_parameterization", "warning"))
    return problems


def output_problems(cfg: TrainConfig) -> list[Problem]:
    """output_dir can be written; no file of another run of the same output_name is there: its final
    model is never overwritten unless resuming, its step/epoch saves and states only by resuming it."""
    if problem := unwritable(Path(os.path.abspath(cfg.output_dir))):
        return [Problem("output_dir", problem)]
    if not cfg.resume:
        for suffix in ("", EMA_SUFFIX, BEST_SUFFIX):
            final = model_file(cfg, suffix)
            if final.exists():
                return [Problem("output_name", f"{final} exists already and is never overwritten: choose "
                                "another output_name (or output_dir), or resume the run that made it")]
    if resumes_this_output(cfg):
        return []
    saves = sorted(path for kind in ("step", "epoch")
                   for paths in numbered_saves(cfg.output_dir, cfg.output_name, kind).values() for path in paths)
    if saves:
        shown = ", ".join(path.name for path in saves[:3]) + (f" and {len(saves) - 3} more" if len(saves) > 3 else "")
        return [Problem("output_name", f"{cfg.output_dir} holds step saves or states of an earlier run named "
                        f"{cfg.output_name!r} ({shown}), which this run would replace: resume that run, choose "
                        "another output_name (or output_dir), or delete them")]
    return []


def resumes_this_output(cfg: TrainConfig) -> bool:
    """Whether the run resumes a state of its own output_name in its own output_dir (so the saves there are its own)."""
    if not cfg.resume.strip():
        return False
    state = Path(os.path.abspath(cfg.resume))
    return any(state == Path(os.path.abspath(found)) for found in saved_states(cfg.output_dir, cfg.output_name))


def unwritable(folder: Path) -> str | None:
    """Why the trainer could not write into `folder` (creating it), None when it can."""
    if folder.exists():
        if not folder.is_dir():
            return f"{folder} is a file: choose a folder for the trained model"
        try:
            with tempfile.TemporaryFile(dir=folder):
                return None
        except OSError as exc:
            return f"cannot write into {folder} ({exc.strerror or exc}): choose a folder you can write to"
    parent = next((p for p in folder.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return (f"cannot create {folder}: {parent or 'its drive'} is not a writable folder; choose a folder "
                "you can write to")
    return None


def resume_problems(cfg: TrainConfig) -> list[Problem]:
    if not cfg.resume.strip():
        return []
    try:
        load_position(Path(cfg.resume))
        check_state_files(Path(cfg.resume))
    except ValueError as exc:
        return [Problem("resume", str(exc).removeprefix("resume: "))]
    return []


def sample_problems(cfg: TrainConfig) -> list[Problem]:
    problems = []
    try:
        run_prompts(cfg.sample_prompts, cfg.sample_prompt)
    except PromptError as exc:
        problems.append(Problem(exc.field, exc.message))
    if cfg.sample_clip_model.strip() and (problem := clip_folder_problem(cfg.sample_clip_model)):
        problems.append(Problem("sample_clip_model", problem))
    return problems


def optimizer_problems(cfg: TrainConfig) -> list[Problem]:
    """Settings the optimizer ignores: Adafactor in relative-step mode sets its own step size."""
    if not sets_own_step_size(cfg.optimizer_type, parse_optimizer_args(cfg.optimizer_args)):
        return []
    ignored = [f"lr_scheduler {cfg.lr_scheduler}"] if cfg.lr_scheduler != "constant" else []
    ignored += ["lr_drops"] if cfg.lr_drops else []
    ignored += ["auto_stop's learning-rate reductions"] if cfg.auto_stop and cfg.auto_stop_lr_reductions else []
    if not ignored:
        return []
    return [Problem("optimizer_type", f"Adafactor in relative-step mode sets its own step size, so "
                    f"{' and '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored: add optimizer_args "
                    "relative_step=False and scale_parameter=False to use them", "warning")]


def fused_backward_problems(cfg: TrainConfig, processes: int) -> list[Problem]:
    """Settings under which fused_backward_pass (core/train/fused.py) cannot work, each naming its field."""
    if not cfg.fused_backward_pass:
        return []
    off = "or turn off fused_backward_pass"
    problems = []
    if cfg.optimizer_type not in FUSED_OPTIMIZERS:
        problems.append(Problem("optimizer_type", f"fused_backward_pass works with optimizer_type "
                                f"{' or '.join(FUSED_OPTIMIZERS)} only (as in sd-scripts), not {cfg.optimizer_type}: "
                                f"choose Adafactor, {off}"))
    if cfg.gradient_accumulation_steps > 1:
        problems.append(Problem("gradient_accumulation_steps", "fused_backward_pass updates each weight in the "
                                "backward pass of every batch, so gradients cannot be summed over several: set "
                                f"gradient_accumulation_steps to 1 (a larger train_batch_size instead), {off}"))
    if cfg.train_lora:
        problems.append(Problem("train_lora", "fused_backward_pass is for full fine-tuning (as in sd-scripts): a "
                                f"LoRA's gradients are small, so it would save next to no memory; {off}"))
    if cfg.mixed_precision == "fp16":
        problems.append(Problem("mixed_precision", "fused_backward_pass cannot use fp16's gradient scaler (it checks "
                                f"all gradients together before a step): choose bf16 or no, {off}"))
    if processes > 1 or cfg.distributed:
        field = "accelerate_config_file" if processes == 1 and cfg.num_processes == 1 and cfg.num_machines == 1 \
            else "num_processes"
        problems.append(Problem(field, "fused_backward_pass runs in one process without an accelerate config (several "
                                "GPUs, DeepSpeed and FSDP reduce or split the gradients after it has used them): "
                                f"train with num_processes 1 and no accelerate_config_file, {off}"))
    return problems
