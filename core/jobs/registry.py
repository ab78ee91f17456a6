"""The jobs that `python -m core` can run: name, config model, implementation."""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Callable

from core import config


@dataclass(frozen=True)
class JobSpec:
    name: str
    config: type[config.JobConfig]
    target: str  # "module:function", imported only when the job runs (keeps --help fast)
    summary: str
    launcher: str = ""  # "module:function" giving the argv before `-m core <job>`; default: this Python
    stop_grace_s: float = 60.0  # once asked to stop, how long the job may take before its processes are ended

    def load(self) -> Callable:
        return _import(self.target)

    def launcher_argv(self, cfg: config.JobConfig) -> list[str]:
        return _import(self.launcher)(cfg) if self.launcher else [sys.executable]


def _import(target: str) -> Callable:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


JOBS: dict[str, JobSpec] = {spec.name: spec for spec in [
    JobSpec("scan", config.ScanConfig, "core.dataset.scan:run",
            "Scan dataset folders: formats, sizes, broken images, captions, repeats.", stop_grace_s=30),
    JobSpec("bucket", config.BucketConfig, "core.dataset.buckets:run",
            "Plan aspect-ratio buckets: bucket, resize and crop of every image.", stop_grace_s=30),
    JobSpec("cache", config.CacheConfig, "core.dataset.latents:run",
            "Encode the dataset with the model's VAE into a latent cache.", stop_grace_s=120),
    JobSpec("train", config.TrainConfig, "core.train.loop:run",
            "Fine-tune an SD 1.x / 2.x / XL model (full, or a LoRA) on a captioned dataset.",
            launcher="core.train.launch:launcher_argv", stop_grace_s=600),  # a stopped run saves a state
    JobSpec("tag", config.TagConfig, "core.captions.taggers.wd14:run",
            "Tag images with a WD14 tagger (ONNX) into caption files."),
    JobSpec("caption", config.BlipCaptionConfig, "core.captions.taggers.blip:run",
            "Caption images in sentences with a BLIP model into caption files."),
    JobSpec("clean", config.CleanConfig, "core.captions.cleaning:run",
            "Clean caption files with ordered rules (snapshot first: undoable)."),
    JobSpec("undo_clean", config.UndoCleanConfig, "core.captions.cleaning:run_undo",
            "Restore the caption files of a cleaning snapshot byte for byte."),
    JobSpec("class_images", config.ClassImagesConfig, "core.train.class_images:run",
            "DreamBooth prior preservation: generate the missing class images with the base model."),
    JobSpec("merge_lora", config.MergeLoraConfig, "core.models.lora_merge:run",
            "Merge LoRA files into a base model and save the result as a new model."),
    JobSpec("demo", config.DemoConfig, "core.dataset.demo:run",
            "Build a tiny random model and a demo dataset offline.", stop_grace_s=30),
]}
