"""LyCORIS runs (train_lora with network_module lycoris.kohya): the network over the model's trained parts and
the metadata its file carries. Each module hooks the forward of the layer it adapts and is registered
under its part (core.models.lycoris_net.apply_network), so accelerate prepares, saves and resumes it with
the part, as it does peft's adapters."""
from __future__ import annotations

import json

import torch

from core.config import TrainConfig
from core.config.lycoris import LYCORIS_MODULE, parse_network_args
from core.models.lycoris_net import apply_network, create_network
from core.train.trainable import reached_parameters, text_encoder_parts

BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}  # sd-scripts' ss_base_model_version


def add_lycoris_adapters(model, cfg: TrainConfig, text_encoders: list[str]) -> dict[str, list[torch.nn.Parameter]]:
    """The LyCORIS network of `cfg` on the U-Net and the named text encoders (kept as `model.network`),
    everything else frozen; returns its parameters by part (modules of text-encoder layers that never
    reach the loss stay frozen, as add_lora_adapters leaves them)."""
    parts = {part: getattr(model, part) for part in ("unet", *text_encoder_parts(model))}
    for module in parts.values():
        module.requires_grad_(False)
    network = create_network(
        parts if text_encoders else {"unet": model.unet}, cfg.algo, cfg.network_dim, cfg.network_alpha,
        conv_dim=cfg.conv_dim, conv_alpha=cfg.conv_alpha, dropout=cfg.network_dropout, factor=cfg.factor,
        dora_wd=cfg.dora_wd and cfg.algo != "ia3", args=parse_network_args(cfg.network_args))
    modules = apply_network(network, {part: parts[part] for part in ("unet", *text_encoders)}, model.arch == "sdxl")
    model.network = network
    trained = {}
    for part in ("unet", *text_encoders):
        reached = None if part == "unet" else {id(p) for p in reached_parameters(model, part, cfg.clip_skip)}
        params = []
        for module in modules.get(part, []):
            used = reached is None or id(module.org_module[0].weight) in reached
            module.requires_grad_(used)
            params += list(module.parameters()) if used else []
        trained[part] = params
    return trained


def network_metadata(cfg: TrainConfig, arch: str) -> dict[str, str]:
    """The ss_* metadata sd-scripts writes for a LyCORIS network of a model of `arch` (AUTOMATIC1111, kohya's
    tools and our model library read it)."""
    args = {"algo": cfg.algo, "conv_dim": str(cfg.conv_dim or cfg.network_dim),
            "conv_alpha": f"{cfg.conv_alpha or cfg.network_alpha:g}", "dropout": f"{cfg.network_dropout:g}"}
    if cfg.algo == "lokr":
        args["factor"] = str(cfg.factor)
    if cfg.dora_wd and cfg.algo != "ia3":
        args["dora_wd"] = "True"
    args |= {key: str(value) for key, value in parse_network_args(cfg.network_args).items()}
    return {"ss_base_model_version": BASE_MODEL_VERSIONS[arch], "ss_network_module": LYCORIS_MODULE,
            "ss_network_dim": str(cfg.network_dim),
            "ss_network_alpha": f"{cfg.network_alpha:g}", "ss_network_args": json.dumps(args)}
