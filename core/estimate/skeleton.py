"""The base model of a training run built on the meta device (shapes only, no memory, no weights read), with
what the run trains marked as the trainer marks it: its own functions choose the trained parts and add the
LoRA / LyCORIS adapters, so the counts here are the run's.

The architecture comes from the model's configs: a diffusers folder's config.json files, a single file's
`studio.configs` metadata, or the published configs shipped in core/data/configs for the family its key
names show (a .safetensors header; a .ckpt is read whole, as the loader reads it). With no model chosen, a
family is assumed (from the resolution) and the estimate says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.config import TrainConfig
from core.config.lycoris import LYCORIS_MODULE
from core.models.arch import read_json
from core.models.sd import TEXT_ENCODERS, SDModel, empty_model, shipped_configs, single_file_configs

ARCH_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


@dataclass
class ModelShape:
    arch: str               # sd1 / sd2 / sdxl
    configs: dict           # diffusers configs by part (unet, vae, text_encoder[, text_encoder_2])
    source: str             # the model path, or why a family was assumed
    assumed: bool = False   # no readable model: the family's published configs


def assumed_arch(cfg: TrainConfig) -> str:
    """The family assumed when no model is chosen: SDXL from 1024 px, SD 2.x at 768 px, else SD 1.x."""
    side = max(int(v) for v in cfg.max_resolution.split(","))
    return "sdxl" if side >= 1024 else "sd2" if side >= 768 else "sd1"


def model_shape(cfg: TrainConfig, arch: str | None = None) -> ModelShape:
    """The architecture of cfg's base model, read from configs and headers only; `arch` (sd1/sd2/sdxl) is the
    family to assume when the model is not set or cannot be read."""
    from core.models.loading import Checkpoint, existing_path
    from core.models.sd import _check_folder, base_model_arch

    path = cfg.pretrained_model_name_or_path.strip()
    why = "no model chosen"
    if path and path != NO_MODEL:
        try:
            base = existing_path(path)
            if base.is_dir():
                found = _check_folder(base)
                configs = {part: read_json(base / part / "config.json")
                           for part in ("unet", "vae", *TEXT_ENCODERS[found])}
            else:
                with Checkpoint(base) as ckpt:
                    found, metadata = base_model_arch(base, ckpt.keys), ckpt.metadata
                configs = single_file_configs(base, found, metadata, bool(cfg.v_parameterization))
            return ModelShape(found, {k: v for k, v in configs.items() if k != "scheduler"}, str(base))
        except ValueError as exc:
            why = str(exc)
    family = arch or assumed_arch(cfg)
    configs = shipped_configs(family, family == "sd2" and "768" in cfg.max_resolution)
    return ModelShape(family, {k: v for k, v in configs.items() if k != "scheduler"},
                      f"{why}: assumed {ARCH_NAMES[family]} (the published architecture)", assumed=True)


def meta_model(shape: ModelShape) -> SDModel:
    """The model's parts on the meta device, in fp32 like a loaded model."""
    parts = {part: empty_model(part, shape.configs[part]) for part in ("unet", "vae", *TEXT_ENCODERS[shape.arch])}
    return SDModel(arch=shape.arch, v_prediction=False, unet=parts["unet"], vae=parts["vae"],
                   text_encoder=parts["text_encoder"], tokenizer=None, noise_scheduler=None, scaling_factor=1.0,
                   source=shape.source, text_encoder_2=parts.get("text_encoder_2"))


def mark_trained(model: SDModel, cfg: TrainConfig, on_meta: bool = True) -> dict[str, list[torch.nn.Parameter]]:
    """What the run trains, by part, chosen (and adapters added) by the trainer's own functions; the LoRA adapters
    on the meta device (`on_meta`) or where the weights are."""
    from contextlib import nullcontext

    from core.train.block_lr import block_ranks
    from core.train.lycoris import add_lycoris_adapters
    from core.train.trainable import add_lora_adapters, set_trainable, text_encoder_rates

    te_parts = list(text_encoder_rates(model, cfg))
    trained = set_trainable(model, cfg.train_unet, te_parts, cfg.unet_blocks, cfg.clip_skip)
    if cfg.train_lora and cfg.network_module == LYCORIS_MODULE:  # its modules are made on the CPU (small)
        return add_lycoris_adapters(model, cfg, te_parts)
    with torch.device("meta") if on_meta else nullcontext():  # peft's adapters: where the layers they adapt are
        if cfg.train_lora:
            trained = add_lora_adapters(model, te_parts, cfg.network_dim, cfg.network_alpha, cfg.network_dropout,
                                        cfg.lora_targets, cfg.clip_skip, block_ranks(model, cfg))
    return trained


@dataclass(frozen=True)
class Counted:
    """The run's parameters, without the model: each part's tensors as (elements, trained), and the shapes of the
    trained tensors by part (adapters included)."""
    parts: dict
    trained: dict


# The settings that decide what a run trains and which adapters it adds (the key of `counted`'s memo).
TRAINED_FIELDS = ("train_unet", "train_text_encoder", "learning_rate", "learning_rate_te", "learning_rate_te1",
                  "learning_rate_te2", "unet_blocks", "clip_skip", "train_lora", "network_module", "network_dim",
                  "network_alpha", "lora_targets", "down_lr_weight", "mid_lr_weight", "up_lr_weight",
                  "block_lr_zero_threshold", "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
                  "algo", "conv_dim", "conv_alpha", "factor", "dora_wd", "network_args")
_COUNTED: dict[str, Counted] = {}


def counted(shape: ModelShape, cfg: TrainConfig) -> Counted:
    """What `mark_trained` marks on the meta model, as counts; remembered per architecture and settings that
    matter (adding peft's adapters to SDXL takes seconds; a saver or a second check then costs nothing)."""
    import json

    key = json.dumps([shape.configs, [getattr(cfg, name, None) for name in TRAINED_FIELDS]], sort_keys=True,
                     default=str)
    if key not in _COUNTED:
        model = meta_model(shape)
        trained = mark_trained(model, cfg)
        ids = {id(p) for params in trained.values() for p in params}
        parts = {part: [(p.numel(), id(p) in ids) for p in getattr(model, part).parameters()]
                 for part in ("unet", "vae", *TEXT_ENCODERS[shape.arch])}
        _COUNTED[key] = Counted(parts, {part: [tuple(p.shape) for p in params] for part, params in trained.items()})
    return _COUNTED[key]


# Placeholders of paths the estimate does not read, so that a preset without them can be estimated.
PLACEHOLDERS = {"output_dir": "(output folder)"}


def estimate_config(values: dict) -> TrainConfig:
    """The trainer's settings for an estimate: the form's or a preset's values, validated as the run validates
    them, except that the base model and output folder may still be empty (a built-in preset sets neither).
    ConfigError names the field otherwise."""
    from core.config import validate

    filled = {**values, **{k: v for k, v in PLACEHOLDERS.items() if not str(values.get(k) or "").strip()}}
    if not (values.get("train_data_dir") or values.get("subsets") or str(values.get("dataset_config") or "").strip()):
        filled["train_data_dir"] = ["(dataset)"]
    if not str(filled.get("pretrained_model_name_or_path") or "").strip():
        filled["pretrained_model_name_or_path"] = NO_MODEL
    return validate(TrainConfig, filled, "settings")


NO_MODEL = "(no model chosen)"
