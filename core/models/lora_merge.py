"""The `merge_lora` job: add LoRA files into a base model's weights and save the result as a new model.

Each LoRA's `ratio * alpha/rank * up @ down` is added to the weight it adapts, in the order given
(core.models.lora.merge_lora_into; a LyCORIS file's modules by the LyCORIS library's own merge,
core.models.lycoris_net.merge_lycoris_into), on the CPU in fp32; the model is then saved as one original-layout
.safetensors file (AUTOMATIC1111 / ComfyUI) or a diffusers folder, atomically. Every LoRA file is read
and checked before any is merged, and the output must not exist yet: a merge never replaces a
model. Stopping before the save writes nothing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from core.config.merge import MergeLoraConfig
from core.models.lora import merge_lora_into, read_lora
from core.models.lycoris_net import merge_lycoris_into, read_lycoris
from core.models.sd import load_sd_model, save_sd_model
from core.train.trainable import text_encoder_parts


def output_path(cfg: MergeLoraConfig) -> Path:
    suffix = ".safetensors" if cfg.save_model_as == "safetensors" else ""
    return Path(cfg.output_dir).expanduser() / f"{cfg.output_name}{suffix}"


def read_network(path: str, sdxl: bool) -> tuple[Callable, dict]:
    """(the function that merges it, its tensors) of a LoRA file or of a LyCORIS file (LoHa, LoKr, (IA)^3,
    DoRA, ...: merged by the LyCORIS library); ValueError naming the file for anything else."""
    state_dict = read_lycoris(path)
    if state_dict is not None:
        return merge_lycoris_into, state_dict
    return merge_lora_into, read_lora(path, sdxl)


def _refuse_existing(target: Path) -> None:
    if target.exists():
        raise ValueError(f"{target} exists already: choose another output_name (a merge never replaces a model)")


def run(cfg: MergeLoraConfig, ctx) -> dict:
    target = output_path(cfg)
    _refuse_existing(target)
    multipliers = cfg.multipliers()
    steps = len(cfg.lora_models) + 2  # load, each LoRA, save
    ctx.log(f"loading {cfg.pretrained_model_name_or_path}")
    model = load_sd_model(cfg.pretrained_model_name_or_path, cfg.vae)
    ctx.log(f"model: {model.arch}{' v-prediction' if model.v_prediction else ''}")
    loras = [read_network(path, model.arch == "sdxl") for path in cfg.lora_models]  # all read before merging
    ctx.progress(1, steps)
    parts = {part: getattr(model, part) for part in ("unet", *text_encoder_parts(model))}
    merged = []
    for index, (path, (merge_into, state_dict), ratio) in enumerate(zip(cfg.lora_models, loras, multipliers), start=2):
        try:
            names = merge_into(parts, state_dict, ratio)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        ctx.log(f"{Path(path).name}: {len(names)} modules merged at ratio {ratio:g}")
        merged.append({"file": str(path), "ratio": ratio, "modules": len(names)})
        ctx.progress(index, steps)
        ctx.check_stop("stopped before saving: nothing was written")
    _refuse_existing(target)
    ctx.log(f"saving {target} ({cfg.save_precision})")
    save_sd_model(model, target, cfg.save_model_as, cfg.save_precision,
                  metadata={"studio.merged_loras": json.dumps(merged)})
    ctx.progress(steps, steps)
    ctx.log(f"merged model: {target}")
    return {"model": str(target), "arch": model.arch, "merged": merged}  # "model": listed in the Runs tab
