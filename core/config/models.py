"""Parameters shared by the jobs that use a model (base model, prompts, saving, latents); latent cache, demo kit."""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from core.config.conditions import when
from core.config.dataset import DATA, BucketSettings, LoaderSettings, MaskSettings
from core.config.schema import JobConfig, param
from core.filenames import file_stem_problem

SAVING = "Saving"


class ModelSettings(JobConfig):
    """The base model (and optionally a separate VAE)."""
    pretrained_model_name_or_path: str = param(
        "", "Base model: a diffusers folder or a single .safetensors/.ckpt file (SD 1.x, 2.x, SDXL).",
        label="Base model", widget="file", min_length=1, group="Model", workspace="model")
    vae: str = param(
        "", "Optional separate VAE (diffusers folder or single file), e.g. a fixed fp16 SDXL VAE.",
        label="VAE", widget="file", group="Model")


class SaveSettings(JobConfig):
    """Where and how a model is saved (trainer, LoRA merge)."""
    output_dir: str = param("", "Folder for the model files (created if missing).", label="Output folder",
                            widget="dir", min_length=1, group=SAVING, workspace="output")
    output_name: str = param("model", "File name of the model, without extension.", label="Output name",
                             group=SAVING)
    save_model_as: Literal["safetensors", "diffusers"] = param(
        "safetensors", "Single .safetensors file (A1111/ComfyUI) or a diffusers folder. A LoRA is always one "
        ".safetensors file.", label="Save format", group=SAVING, applies=when("train_lora", False))
    save_precision: Literal["fp32", "fp16", "bf16"] = param(
        "fp16", "Precision of the saved model weights (a LoRA keeps its own).", label="Save precision",
        group=SAVING, applies=when("train_lora", False))

    @field_validator("output_name")
    @classmethod
    def _file_stem(cls, value: str) -> str:
        if problem := file_stem_problem(value):
            raise ValueError(problem)
        return value


class PromptSettings(JobConfig):
    """How captions and prompts become text-encoder states (training and generation alike)."""
    clip_skip: int = param(
        1, "Use the text encoder's output N layers from the end (2 for many anime models). SD 1.x / 2.x: SDXL "
        "always uses the penultimate layer.", label="CLIP skip", group="Model",
        applies=when("model_arch", "sd1", "sd2"), ge=1, le=12)
    max_token_length: Literal[75, 150, 225] = param(
        75, "Longest caption or prompt in tokens, in chunks of 75 as kohya does.", label="Max caption tokens",
        group="Model")


class VaeSettings(JobConfig):
    """The VAE's precision (latent cache and trainer)."""
    no_half_vae: bool = param(
        False, "Run the VAE in fp32 on GPU (SDXL's original VAE is always run in fp32).", label="Full-precision VAE",
        group="Model", advanced=True)


class LatentSettings(LoaderSettings):
    """How VAE latents are made and where their cache files go (in training: with cache_latents)."""
    latents_dir: str = param(
        "", "Folder for the cache files; empty: beside each image in the dataset (as kohya does).",
        label="Latent cache folder", widget="dir", group=DATA, advanced=True, applies=when("cache_latents", True))
    flip_aug: bool = param(
        False, "Flip augmentation: train on horizontally flipped images too (with flip_p), and cache their "
        "latents.", label="Flip images", group=DATA)
    vae_batch_size: int = param(4, "Images encoded at once into the latent cache (same bucket).",
                                label="VAE batch size", group=DATA, advanced=True,
                                applies=when("cache_latents", True), ge=1, le=256)


class CacheConfig(MaskSettings, LatentSettings, VaeSettings, ModelSettings, BucketSettings):  # bases in reverse display order
    """Encode every image of a dataset with the model's VAE once, so training reads latents."""


class DemoConfig(JobConfig):
    """Build a tiny random-weight model and a small captioned dataset, offline, in seconds."""
    out: str = param("demo", "Folder to create: model/ (diffusers), model.safetensors (single file) "
                     "and dataset/.", label="Demo folder", widget="dir", min_length=1, group="Demo kit")
    arch: Literal["sd1", "sd2v", "sdxl"] = param(
        "sd1", "Architecture of the tiny model: SD 1.x, SD 2.x v-prediction or SDXL.", label="Architecture",
        group="Demo kit")
    num_images: int = param(24, "Number of dataset images to generate.", label="Images", group="Demo kit",
                            ge=4, le=500)
    seed: int = param(0, "Random seed for weights and images.", label="Seed", group="Demo kit", advanced=True)
    overwrite: bool = param(
        False, "Replace an existing demo folder's model and dataset (only folders made by the demo job).",
        label="Replace existing", group="Demo kit", advanced=True)
