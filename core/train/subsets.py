"""The trainer's data by subsets: which folders, with which settings, and how an epoch is made of them.

A run's images come from sources: the dataset subsets (the `subsets` table or an sd-scripts `dataset_config`
TOML), else train_data_dir (kohya `N_name` folders give repeats, as sd-scripts makes each one a subset), plus
the DreamBooth class folder (class_data_dir) as one more set of class images. Each source is planned into buckets,
cached and captioned with its own settings (the run's, with the subset's own on top: core.train.subset_configs).

An epoch is composed as sd-scripts' DreamBoothDataset composes it: every training image appears num_repeats
times; the class (`is_reg`) images of a dataset (the sources with the same bucket settings) get repeats that give
exactly as many class samples as that dataset has training samples (core.train.data.balanced_repeats, over the
class images in subset order); their loss is weighted prior_loss_weight. The validation split holds out the same
fraction of each training subset (class images are never held out), as sd-scripts splits each subset.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from core.config import TrainConfig
from core.config.subsets import DATASET_KEYS, RUN_NAMES
from core.dataset.discovery import find_images
from core.jobs.protocol import JobContext, JobStopped
from core.train.data import (
    Example,
    balance_class_examples,
    build_examples,
    class_data_config,
    class_image_count,
    prepare_class_images,
    prepare_latent_cache,
    readable_examples,
)
from core.train.start_checks import data_problems, refuse_or_warn, split_problem
from core.train.subset_configs import dataset_subsets, subset_config
from core.train.validation import split_validation


@dataclass(frozen=True)
class Source:
    """One subset as the trainer reads it."""
    name: str
    cfg: TrainConfig             # the run's settings with the subset's own; its folder(s) as train_data_dir
    is_reg: bool = False
    num_repeats: int | None = None  # None: each image's kohya `N_name` folder gives its repeats
    default_caption: str = ""    # of its images without a caption file
    own_settings: bool = False   # its examples carry cfg (their captions and flips follow it)

    @property
    def dataset(self) -> tuple:
        """The bucket settings: sources with the same ones are one sd-scripts dataset (class images balance
        against the training images of their own dataset)."""
        return tuple(getattr(self.cfg, RUN_NAMES.get(key, key)) for key in DATASET_KEYS)


def subset_sources(cfg: TrainConfig) -> list[Source]:
    """The sources of the run's subsets ([] without subsets); ConfigError for an invalid subset or TOML."""
    return [Source(subset.image_dir, subset_config(cfg, subset), subset.is_reg, subset.num_repeats,
                   (cfg.class_prompt if subset.is_reg else cfg.instance_prompt) if subset.class_tokens is None
                   else subset.class_tokens, own_settings=True)
            for subset in dataset_subsets(cfg)]


def sources(cfg: TrainConfig) -> list[Source]:
    """Every source of the run's images, in order: the subsets (or train_data_dir), then class_data_dir."""
    found = subset_sources(cfg) or [Source("train_data_dir", cfg, default_caption=cfg.instance_prompt)]
    if cfg.prior_preservation:
        found.append(Source(f"class_data_dir {cfg.class_data_dir}", class_data_config(cfg), True,
                            default_caption=cfg.class_prompt))
    return found


def source_examples(source: Source, ctx: JobContext) -> list[Example]:
    """The source's usable images with their repeats, loss weight and (for a subset) its settings."""
    weight = source.cfg.prior_loss_weight if source.is_reg else 1.0
    examples = build_examples(source.cfg, ctx, source.default_caption, weight)
    options = source.cfg if source.own_settings else None
    return [replace(e, repeats=source.num_repeats or e.repeats, options=options) for e in examples]


def by_folder(source: Source, examples: list[Example]) -> list[tuple[Source, list[Example]]]:
    """A folder source's examples split by kohya `N_name` folder, each one a subset as in sd-scripts (a subset's
    examples stay whole)."""
    if source.num_repeats is not None:
        return [(source, examples)]
    folder_of = {image.path: image.concept_dir for image in find_images(source.cfg.train_data_dir,
                                                                        source.cfg.recursive)}
    folders: dict[Path, list[Example]] = {}
    for example in examples:
        folders.setdefault(folder_of.get(example.image, example.image.parent), []).append(example)
    if len(folders) < 2:
        return [(source, examples)]
    return [(replace(source, name=str(folder)), mine) for folder, mine in folders.items()]


def validation_config(cfg: TrainConfig) -> TrainConfig | None:
    """The run's settings with validation_data_dir as the dataset (None without one)."""
    if not cfg.validation_data_dir.strip():
        return None
    # Validation measures the whole image (unmasked): its images need no masks.
    return cfg.model_copy(update={"train_data_dir": [cfg.validation_data_dir], "subsets": [], "dataset_config": "",
                                  "masked_loss": False})


def prepare_data(cfg: TrainConfig, ctx: JobContext, accelerator) -> tuple[list[Example], list[Example]]:
    """(training examples, validation examples): the missing DreamBooth class images generated and the latent
    caches built (by the main process), each source read, the validation images split off (or read from
    validation_data_dir), the class images balanced, and the epoch's composition logged."""
    found, validation_cfg = sources(cfg), validation_config(cfg)
    if accelerator.is_main_process:
        class_folder_full = prepare_class_images(cfg, ctx)
        if class_folder_full and cfg.cache_latents:
            for c in [s.cfg for s in found] + ([validation_cfg] if validation_cfg else []):
                prepare_latent_cache(c, ctx)
    accelerator.wait_for_everyone()
    if cfg.prior_preservation and class_image_count(cfg) < cfg.num_class_images:
        ctx.log("stopped while generating class images; start the run again to go on")
        raise JobStopped()
    parts = [part for source in found for part in by_folder(source, source_examples(source, ctx))]
    training = [(source, examples) for source, examples in parts if not source.is_reg]
    validation = build_examples(validation_cfg, ctx) if validation_cfg else None
    folders = cfg if not cfg.uses_subsets else cfg.model_copy(
        update={"train_data_dir": [s.cfg.train_data_dir[0] for s, _ in training] or ["(no training subset)"]})
    refuse_or_warn(data_problems(folders, sum(len(e) for _, e in training),
                                 None if validation is None else len(validation)), ctx.warning)
    if validation is None:
        training, validation = split_each(training, cfg, ctx)
    if validation and not cfg.cache_latents:
        validation = readable_examples(validation, ctx, cfg.max_image_pixels)
    parts = training + balance_class_images([(s, e) for s, e in parts if s.is_reg], training, cfg, ctx)
    log_composition(parts, ctx)
    if validation:
        ctx.log(f"validation: {len(validation)} images held out")
    return [e for _, examples in parts for e in examples], validation


def split_each(training: list[tuple[Source, list[Example]]], cfg: TrainConfig, ctx: JobContext):
    """(training parts, validation examples): validation_split of each training source held out; a source too
    small to split (one image) is trained whole."""
    kept, held_out = [], []
    for source, examples in training:
        if cfg.validation_split and split_problem(len(examples), cfg.validation_split):
            ctx.log(f"validation: {source.name} has {len(examples)} image(s), none held out")
            kept.append((source, examples))
            continue
        train, validation = split_validation(examples, cfg.validation_split, cfg.validation_seed)
        kept.append((source, train))
        held_out += validation
    return kept, held_out


def balance_class_images(class_parts: list[tuple[Source, list[Example]]],
                         training: list[tuple[Source, list[Example]]], cfg: TrainConfig, ctx: JobContext):
    """The class images' parts with the repeats that give each dataset as many class samples as training
    samples (sd-scripts' DreamBoothDataset); images left without a repeat are not used, as in sd-scripts."""
    balanced = []
    for dataset in dict.fromkeys(source.dataset for source, _ in class_parts):
        mine = [(source, examples) for source, examples in class_parts if source.dataset == dataset]
        images = [e for _, examples in mine for e in examples]
        if not images:
            raise ValueError(", ".join(source.name for source, _ in mine) + ": no usable class images (see the "
                             "warnings above)")
        samples = sum(e.repeats for source, examples in training if source.dataset == dataset for e in examples)
        counted = iter(balance_class_examples(images, samples, ctx, cfg.prior_loss_weight))
        balanced += [(source, [e for e in (next(counted) for _ in examples) if e.repeats])
                     for source, examples in mine]
    return balanced


def composition(parts: list[tuple[Source, list[Example]]]) -> list[dict]:
    """Per source: its name, class images or not, images, repeats (the images' own, or "balanced"), samples per
    epoch and their share of the epoch."""
    total = sum(e.repeats for _, examples in parts for e in examples) or 1
    rows = []
    for source, examples in parts:
        samples = sum(e.repeats for e in examples)
        counts = sorted({e.repeats for e in examples})
        repeats = "balanced" if source.is_reg else ", ".join(map(str, counts)) or "-"
        rows.append({"subset": source.name, "is_reg": source.is_reg, "images": len(examples), "repeats": repeats,
                     "samples": samples, "share": samples / total})
    return rows


def log_composition(parts: list[tuple[Source, list[Example]]], ctx: JobContext) -> None:
    rows = composition(parts)
    ctx.log(f"epoch: {sum(r['samples'] for r in rows)} samples from {len(rows)} subset(s)")
    for r in rows:
        kind = "class images" if r["is_reg"] else "images"
        ctx.log(f"  {r['subset']}: {r['images']} {kind} x repeats {r['repeats']} = {r['samples']} samples "
                f"({r['share']:.1%} of an epoch)")
