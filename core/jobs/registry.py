"""The jobs that `python -m core` can run: name, config model, implementation."""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Callable

from core import config
from core.jobs.locks import Target


@dataclass(frozen=True)
class JobSpec:
    name: str
    config: type[config.JobConfig]
    target: str  # "module:function", imported only when the job runs (keeps --help fast)
    summary: str
    launcher: str = ""  # "module:function" giving the argv before `-m core <job>`; default: this Python
    stop_grace_s: float = 60.0  # once asked to stop, how long the job may take before its processes are ended
    writes: Callable[[config.JobConfig], list[Target]] = lambda cfg: []  # what it locks while it runs
    needs_gpu: bool = True  # runs its models on the GPU when there is one; the queue runs one such job at a time

    def load(self) -> Callable:
        return _import(self.target)

    def launcher_argv(self, cfg: config.JobConfig) -> list[str]:
        return _import(self.launcher)(cfg) if self.launcher else [sys.executable]


def _import(target: str) -> Callable:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def _folders(values: list[str] | str) -> list[str]:
    return [v for v in ([values] if isinstance(values, str) else values) if v.strip()]


def model_output(cfg) -> list[Target]:
    return [Target("model output", cfg.output_dir, "output_dir")]


def captions(cfg) -> list[Target]:
    return [] if getattr(cfg, "dry_run", False) else [Target("captions", d, "train_data_dir") for d in _folders(cfg.train_data_dir)]


def restored_captions(cfg) -> list[Target]:
    from core.captions.cleaning import snapshot_folders  # reads the snapshot's manifest only when the job runs

    return [Target("captions", folder, "snapshot") for folder in snapshot_folders(cfg.snapshot.strip())]


def latent_cache(cfg) -> list[Target]:
    """The latents_dir, or the dataset folders (and a DreamBooth class folder) the cache files go beside."""
    if folders := _folders(cfg.latents_dir):
        return [Target("latent cache", folder, "latents_dir") for folder in folders]
    return [Target("latent cache", folder, field) for field in ("train_data_dir", "class_data_dir")
            for folder in _folders(getattr(cfg, field, []))]


def class_images(cfg) -> list[Target]:
    return [Target("class images", folder, "class_data_dir") for folder in _folders(cfg.class_data_dir)]


def training(cfg) -> list[Target]:
    return [*model_output(cfg), *(latent_cache(cfg) if cfg.cache_latents else []),
            *(class_images(cfg) if cfg.prior_preservation else [])]


JOBS: dict[str, JobSpec] = {spec.name: spec for spec in [
    JobSpec("scan", config.ScanConfig, "core.dataset.scan:run",
            "Scan dataset folders: formats, sizes, broken images, captions, repeats.", stop_grace_s=30,
            needs_gpu=False),
    JobSpec("bucket", config.BucketConfig, "core.dataset.buckets:run",
            "Plan aspect-ratio buckets: bucket, resize and crop of every image.", stop_grace_s=30,
            needs_gpu=False),
    JobSpec("cache", config.CacheConfig, "core.dataset.latents:run",
            "Encode the dataset with the model's VAE into a latent cache.", stop_grace_s=120,
            writes=latent_cache),
    JobSpec("train", config.TrainConfig, "core.train.loop:run",
            "Fine-tune an SD 1.x / 2.x / XL model (full, or a LoRA) on a captioned dataset.",
            launcher="core.train.launch:launcher_argv", stop_grace_s=600,  # a stopped run saves a state
            writes=training),
    JobSpec("tag", config.TagConfig, "core.captions.taggers.wd14:run",
            "Tag images with a WD14 tagger (ONNX) into caption files.", writes=captions),
    JobSpec("caption", config.BlipCaptionConfig, "core.captions.taggers.blip:run",
            "Caption images in sentences with a BLIP model into caption files.", writes=captions),
    JobSpec("vlm_caption", config.VlmCaptionConfig, "core.captions.taggers.vlm:run",
            "Caption images with a vision-language model (Florence-2, Qwen-VL, JoyCaption, BLIP-2...) into caption "
            "files.", writes=captions),
    JobSpec("clean", config.CleanConfig, "core.captions.cleaning:run",
            "Clean caption files with ordered rules (snapshot first: undoable).", writes=captions, needs_gpu=False),
    JobSpec("undo_clean", config.UndoCleanConfig, "core.captions.cleaning:run_undo",
            "Restore the caption files of a cleaning snapshot byte for byte.", writes=restored_captions,
            needs_gpu=False),
    JobSpec("class_images", config.ClassImagesConfig, "core.train.class_images:run",
            "DreamBooth prior preservation: generate the missing class images with the base model.",
            writes=class_images),
    JobSpec("merge_lora", config.MergeLoraConfig, "core.models.lora_merge:run",
            "Merge LoRA files into a base model and save the result as a new model.", writes=model_output,
            needs_gpu=False),
    JobSpec("demo", config.DemoConfig, "core.dataset.demo:run",
            "Build a tiny random model and a demo dataset offline.", stop_grace_s=30,
            writes=lambda cfg: [Target("demo kit", cfg.out, "out")], needs_gpu=False),
    JobSpec("download", config.DownloadConfig, "core.models.download:run",
            "Download model files from the Hugging Face Hub (resumable, hash-checked).", stop_grace_s=30,
            writes=lambda cfg: [Target("download", str(cfg.folder()), "local_dir")], needs_gpu=False),
]}
