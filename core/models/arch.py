"""Which Stable Diffusion family a model is, from names alone (key names, configs), without torch: the
GUI checks a chosen model with it, and the loader (core/models/loading.py) uses the same rules."""
from __future__ import annotations

import json
import struct
from pathlib import Path

ARCH_PREFIXES = (("conditioner.embedders.", "sdxl"), ("cond_stage_model.model.", "sd2"),
                 ("cond_stage_model.transformer.", "sd1"))
SAFETENSORS_HEADER_LIMIT = 100 * 2**20  # a header larger than this is not a real checkpoint's


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read this JSON file ({exc})") from None


def arch_of_keys(keys) -> str:
    """sd1 / sd2 / sdxl for a full original-layout checkpoint, "vae" for a VAE alone, else
    "unknown"."""
    keys = list(keys)
    for prefix, arch in ARCH_PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            return arch
    return "vae" if "encoder.conv_in.weight" in keys else "unknown"


def arch_of_folder(folder: Path) -> str:
    """sd1 / sd2 / sdxl for a diffusers pipeline folder (from its class and text encoder)."""
    index = read_json(folder / "model_index.json")
    if "XL" in str(index.get("_class_name", "")):
        return "sdxl"
    text_config = folder / "text_encoder" / "config.json"
    if text_config.is_file() and read_json(text_config).get("hidden_act") == "gelu":
        return "sd2"  # OpenCLIP ViT-H; SD 1.x uses OpenAI CLIP with quick_gelu
    return "sd1"


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors file's header (8-byte length, then JSON); ValueError naming the
    file when it is not one."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if not 2 <= length <= SAFETENSORS_HEADER_LIMIT:
                raise ValueError(f"a header of {length} bytes")
            header = json.loads(f.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a table of tensors")
    except (OSError, ValueError, struct.error) as exc:
        raise ValueError(f"{path}: cannot read this .safetensors file, it is damaged or not a model ({exc})") from None
    return [key for key in header if key != "__metadata__"]


def arch_by_names(path: Path) -> str | None:
    """sd1 / sd2 / sdxl / vae / unknown of an existing model path read from names alone (a diffusers folder's
    configs, a .safetensors header); None for a .ckpt, whose names are inside its pickle (see
    core.models.loading.model_arch)."""
    if path.is_dir():
        return arch_of_folder(path) if (path / "model_index.json").is_file() else "unknown"
    if path.suffix.lower() == ".safetensors":
        return arch_of_keys(safetensors_keys(path))
    return None
