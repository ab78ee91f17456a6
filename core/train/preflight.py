"""Check the trainer's settings before a run starts (the Training tab's "Check settings").

`check_training(values)` reports every problem a user should fix, each naming its field and what
to do, without loading model weights and without changing anything on disk: models are recognised
by their file names and key names (a safetensors header), images by their headers, the latent
cache by its files' metadata, and output_dir by a temporary file removed again (or, when the
folder does not exist yet, by the permissions of its nearest existing parent).

The latent cache count follows the cache job (`core.dataset.latents.stale_items`): an image counts when
its cache file is missing or unreadable, or was made from another image file (size, mtime),
bucket, resize, crop, compute dtype or without flipped latents that flip_aug wants. Whether it was
made by the current VAE is not checked: the job compares a hash of the VAE's weights, which means
loading them; the run still finds such files and rebuilds them first.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from core.config import ConfigError, TrainConfig, validate
from core.dataset.buckets import BucketAssignment, plan_buckets
from core.dataset.discovery import caption_path, check_folders
from core.dataset.latents import cache_path_for, choose_precision, is_cache_valid, recipe
from core.dataset.masks import MaskFinder, mask_finder
from core.jobs.locks import busy_message, conflicts
from core.jobs.registry import JOBS
from core.jobs.runner import display_command, job_command
from core.train.data import balanced_repeats, cache_config, class_data_config, class_image_count
from core.train.schedules import total_steps
from core.train.start_checks import Problem, class_image_problems, data_problems, settings_problems
from core.train.subsets import subset_sources

SOURCE = "settings"
BIG_MODEL_BYTES = 500 * 2**20  # real SD models are GBs; the demo kit's tiny ones a few MB
LISTED = 3  # paths named in a warning about many files


@dataclass
class Preflight:
    problems: list[Problem]
    images: int = 0             # usable training images (repeats not counted)
    cache_missing: int = 0      # images whose latent cache file is missing or stale
    cache_latents: bool = False
    class_images: int = 0       # images in class_data_dir now
    num_class_images: int = 0   # images it should hold (0: no prior preservation)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def needs_cache(self) -> bool:
        return self.cache_latents and self.cache_missing > 0

    def report(self) -> str:
        """A markdown summary: errors, then warnings, then the dataset and cache counts."""
        count = len(self.errors)
        lines = [f"**{count} problem{'s' if count > 1 else ''} to fix before training:**" if count
                 else "**Settings look good.**"]
        lines += [_bullet(p) for p in self.errors]
        if self.warnings:
            lines += ["", "**Warnings:**", *(_bullet(p) for p in self.warnings)]
        if self.images:
            cache = (f"{self.cache_missing} missing or stale — build it now or the run builds it first"
                     if self.cache_missing else "up to date") if self.cache_latents else "off"
            lines += ["", f"{self.images} images; latent cache: {cache}"]
        if self.num_class_images:
            line = f"{self.class_images} of {self.num_class_images} class images"
            lines.append(line + ("; the missing ones are generated before training"
                                 if self.class_images < self.num_class_images else ""))
        return "\n".join(lines)


def _bullet(problem: Problem) -> str:
    return f"- `{problem.field}`: {problem.message}" if problem.field else f"- {problem.message}"


def check_training(values: dict) -> Preflight:
    """Every problem of the trainer's settings `values` (a TrainConfig as a dict): the trainer's own
    start checks (core.train.start_checks), then what only a look at the data and the machine shows."""
    try:
        cfg = validate(TrainConfig, values, SOURCE)
    except ConfigError as err:
        return Preflight([schema_problem(line) for line in str(err).splitlines()])
    problems, _ = settings_problems(cfg, cfg.num_processes)  # the GUI starts num_processes processes
    if cfg.uses_subsets:
        data, assignments, missing = check_subsets(cfg)
    else:
        data, assignments = check_dataset(cfg)
        missing = count_stale_latents(cfg, assignments) if cfg.cache_latents else 0
    class_problems, class_images = check_class_images(cfg, assignments)
    problems += [*data, *class_problems, *check_device(cfg), *busy_problems(cfg)]
    wanted = cfg.num_class_images if cfg.prior_preservation else 0
    return Preflight(problems, len(assignments), missing, cfg.cache_latents, class_images, wanted)


def planned_steps(cfg: TrainConfig) -> tuple[int, str] | None:
    """(optimizer steps, how they were counted) of a run of these settings: max_train_steps, or for
    max_train_epochs about as many as the dataset planned now makes (each bucket's samples with their repeats,
    less the validation split, in batches; as many class samples again with prior preservation; over gradient
    accumulation: core.train.schedules.total_steps). None when the dataset cannot be planned."""
    if not cfg.max_train_epochs:
        return cfg.max_train_steps, ""
    if cfg.uses_subsets:
        problems, assignments, _ = check_subsets(cfg)
    else:
        problems = _folder_problems("train_data_dir", cfg.train_data_dir, "")
        assignments = [] if problems else plan_buckets(cfg)[0]
    if not assignments:
        return None
    kept = 1 - (cfg.validation_split if not cfg.validation_data_dir.strip() else 0)
    buckets: dict[tuple, int] = {}
    for assignment in assignments:
        buckets[assignment.bucket] = buckets.get(assignment.bucket, 0) + assignment.repeats
    batches = sum(math.ceil(samples * kept / cfg.train_batch_size) for samples in buckets.values())
    batches *= 2 if cfg.prior_preservation else 1
    steps, _ = total_steps(cfg, batches)
    return steps, f"about {steps // cfg.max_train_epochs} per epoch x {cfg.max_train_epochs} epochs"


def check_with_command(values: dict) -> tuple[Preflight, str | None]:
    """The check of `values` and, when the run can start, the command it starts with (as the GUI starts it; its
    run folder is made then)."""
    found = check_training(values)
    if not found.ok:
        return found, None
    cfg = validate(TrainConfig, values, SOURCE)
    return found, display_command(job_command("train", Path("runs") / "train-<new run>", cfg))


def check_report(values: dict) -> tuple[str, bool, bool]:
    """(Markdown report, ok to start, latent cache to build) as Check settings shows them: the problems, the
    dataset and cache counts and, when the run can start, the command it starts with."""
    found, command = check_with_command(values)
    report = found.report() + (f"\n\nThe run will start with:\n```\n{command}\n```" if command else "")
    return report, found.ok, found.needs_cache


def busy_problems(cfg: TrainConfig) -> list[Problem]:
    """The folders the run would write that another running job writes now (the start would be refused)."""
    return [Problem(target.field, busy_message(target, holder))
            for target, holder in conflicts(JOBS["train"].writes(cfg))]


def schema_problem(line: str) -> Problem:
    """One line of `format_validation_error` as a Problem on the field it names (checks across
    fields: on the field their message starts with, if any)."""
    message = line.removeprefix(f"{SOURCE}: ")
    if match := re.match(r"field '([^'.]+)[^']*': ", message):
        return Problem(match.group(1), message[match.end():])
    if match := re.match(r"unknown key '([^'.]+)", message):
        return Problem(match.group(1), message)
    first = message.split(" ", 1)[0]
    return Problem(first if first in TrainConfig.model_fields else None, message)


def check_dataset(cfg: TrainConfig) -> tuple[list[Problem], list[BucketAssignment]]:
    """(problems, the bucket plan's usable images) of train_data_dir and validation_data_dir."""
    problems = _folder_problems("train_data_dir", cfg.train_data_dir, "; correct or remove it")
    if problems:
        return problems, []
    assignments, skipped = plan_buckets(cfg)
    if skipped:
        problems.append(Problem("train_data_dir", _skipped_message(skipped), "warning"))
    validation = None
    if folder := cfg.validation_data_dir.strip():
        missing = _folder_problems("validation_data_dir", [folder], "")
        problems += missing
        validation = None if missing else len(plan_buckets(cfg.model_copy(update={"train_data_dir": [folder]}))[0])
    problems += data_problems(cfg, len(assignments), validation)
    uncaptioned = sum(not caption_path(a.path, cfg.caption_extension).is_file() for a in assignments)
    if uncaptioned and not cfg.instance_prompt:
        problems.append(Problem("caption_extension", f"{uncaptioned} of {len(assignments)} images have no "
                                f"{cfg.caption_extension} caption file and train with an empty caption: "
                                "caption them first, or check caption_extension", "warning"))
    problems += missing_mask_problems(cfg, assignments)
    return problems, assignments


def missing_mask_problems(cfg: TrainConfig, assignments: list[BucketAssignment]) -> list[Problem]:
    """With masked_loss and a mask folder: a warning for the images that have no mask there (they are skipped)."""
    masks = mask_finder(cfg)
    if masks.folder is None or not masks.folder.is_dir():
        return []  # no folder (start_checks reports a missing one)
    missing = [a.path for a in assignments if a.path.stem not in masks.files()]
    if not missing:
        return []
    return [Problem("conditioning_data_dir", f"{len(missing)} of {len(assignments)} images have no mask in "
                    f"{masks.folder} (a mask image with the same file stem), e.g. {missing[0].name}: they are "
                    "skipped; add their masks, or run the Dataset tab's scan with this folder for the list",
                    "warning")]


def check_subsets(cfg: TrainConfig) -> tuple[list[Problem], list[BucketAssignment], int]:
    """(problems, the training images with their subset's repeats, images whose latent cache is missing or stale)
    of the dataset subsets (the table's or dataset_config's; class_data_dir is check_class_images')."""
    field = "dataset_config" if cfg.dataset_config.strip() else "subsets"
    try:
        found = subset_sources(cfg)
    except ConfigError as err:
        return [Problem(field, str(err))], [], 0
    problems, training, missing, class_repeats = [], [], 0, []
    if cfg.train_data_dir:
        problems.append(Problem("train_data_dir", f"not used: the {field} give the images (as sd-scripts ignores "
                                "train_data_dir with a dataset config); clear it to silence this", "warning"))
    for source in found:
        folder = source.cfg.train_data_dir[0]
        if missing_folder := _folder_problems(field, [folder], ""):
            problems += missing_folder
            continue
        assignments, skipped = plan_buckets(source.cfg)
        if skipped:
            problems.append(Problem(field, f"{folder}: {_skipped_message(skipped)}", "warning"))
        if not assignments:
            problems.append(Problem(field, f"{folder}: no usable images", "warning"))
        assignments = [replace(a, repeats=source.num_repeats) for a in assignments]
        if source.is_reg:
            class_repeats += [a.repeats for a in assignments]
        else:
            training += assignments
        missing += count_stale_latents(source.cfg, assignments) if cfg.cache_latents else 0
    if any(p.severity == "error" for p in problems):
        return problems, training, missing
    problems += data_problems(cfg.model_copy(update={"train_data_dir": [s.cfg.train_data_dir[0] for s in found]}),
                              len(training), None)
    if class_repeats and training:
        unused = balanced_repeats(class_repeats, sum(a.repeats for a in training)).count(0)
        problems += class_image_problems(unused, len(class_repeats))
    return problems, training, missing


def _folder_problems(field: str, folders: list[str], advice: str) -> list[Problem]:
    problems = []
    for folder in folders:
        try:
            check_folders([folder])
        except ValueError as exc:
            problems.append(Problem(field, f"{exc}{advice}"))
    return problems


def check_class_images(cfg: TrainConfig, instance: list[BucketAssignment]) -> tuple[list[Problem], int]:
    """(problems, images in the class folder now) of DreamBooth prior preservation; `instance`: the
    training images, whose samples per epoch the class samples match."""
    if not cfg.prior_preservation:
        return [], 0
    folder = Path(cfg.class_data_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        return [Problem("class_data_dir", f"{folder} is a file: choose a folder for the class images")], 0
    count = class_image_count(cfg)
    assignments, skipped = plan_buckets(class_data_config(cfg)) if count else ([], [])
    problems = [Problem("class_data_dir", _skipped_message(skipped), "warning")] if skipped else []
    repeats = [a.repeats for a in assignments] + [1] * (cfg.num_class_images - count)
    unused = balanced_repeats(repeats, sum(a.repeats for a in instance)).count(0) if instance else 0
    return problems + class_image_problems(unused, len(repeats)), count


def _skipped_message(skipped: list[dict]) -> str:
    shown = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:LISTED])
    more = f" (and {len(skipped) - LISTED} more)" if len(skipped) > LISTED else ""
    return f"{len(skipped)} skipped, they will not be trained: {shown}{more}"


def check_device(cfg: TrainConfig) -> list[Problem]:
    """Warnings for settings meant for a CUDA GPU when there is none, and for more processes on this
    machine than it has GPUs."""
    local = cfg.num_processes // cfg.num_machines  # accelerate launches this many here
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        wanted = len(cfg.gpu_ids.split(",")) if cfg.gpu_ids.strip() not in ("", "all") else gpus
        if local > min(gpus, wanted):
            return [Problem("num_processes", f"{local} processes on this machine but {min(gpus, wanted)} GPU(s) "
                            "to run them (see gpu_ids): use one process per GPU", "warning")]
        return []
    problems = []
    if local > 1 and os.environ.get("ACCELERATE_USE_CPU") != "1":
        problems.append(Problem("num_processes", "several processes need one CUDA GPU each and none was found: "
                                "set num_processes to 1", "warning"))
    if cfg.mixed_precision != "no":
        full = next((f" with {f}" for f in ("full_fp16", "full_bf16") if getattr(cfg, f)), "")
        problems.append(Problem("mixed_precision", f"mixed_precision {cfg.mixed_precision}{full} is meant "
                                "for a CUDA GPU and none was found: set mixed_precision to no (fp32) to "
                                "train on the CPU", "warning"))
    if _size_on_disk(cfg.pretrained_model_name_or_path) > BIG_MODEL_BYTES:
        problems.append(Problem(None, "no CUDA GPU found: training a full-size model on the CPU is very slow "
                                "(with an NVIDIA GPU, check that PyTorch was installed with CUDA)", "warning"))
    return problems


def _size_on_disk(model: str) -> int:
    path = Path(os.path.expanduser(model))
    files = [path] if path.is_file() else [Path(folder, name) for folder, _, names in os.walk(path) for name in names]
    return sum(f.stat().st_size for f in files if f.is_file())


def count_stale_latents(cfg: TrainConfig, assignments: list[BucketAssignment]) -> int:
    """Images whose latent cache file is missing or stale (see the module docstring)."""
    caches = cache_config(cfg)
    # The compute dtype, as the job picks it for an SD 1.x/2.x VAE (SDXL, whose own VAE it runs in
    # fp32 on CUDA, is refused by check_model).
    _, dtype = choose_precision(False, cfg.no_half_vae)
    masks = mask_finder(caches)
    return sum(not _cache_current(a, cache_path_for(a.path, caches), dtype, cfg.flip_aug, masks) for a in assignments)


def _cache_current(assignment: BucketAssignment, cache: Path, dtype: torch.dtype, flip: bool,
                   masks: MaskFinder) -> bool:
    """As the cache job decides, but trusting the VAE identity recorded in the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(cache), framework="pt") as f:
            vae_identity = json.loads((f.metadata() or {})["vae"])
        stat = os.stat(assignment.path)
        expected = recipe(assignment, stat, vae_identity, dtype, masks.find(assignment.path))
    except Exception:  # missing, unreadable or without a recipe, the image or its mask is gone: rebuilt
        return False
    return is_cache_valid(cache, expected, flip)
