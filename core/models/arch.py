"""Which Stable Diffusion family a model is, from names alone (key names, configs), without torch: the
GUI checks a chosen model with it, and the loader (core/models/loading.py) uses the same rules."""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from core.fsutil import format_bytes

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


class ModelFileError(ValueError):
    """A model file that cannot be read: the message names the file, `reason` says why in a few words."""

    def __init__(self, path: Path, what: str, reason: str):
        super().__init__(f"{path}: cannot read this {what}, it is damaged or not a model ({reason})")
        self.reason = reason


def safetensors_header(path: Path) -> dict:
    """The header of a .safetensors file: {tensor name: {dtype, shape, data_offsets}, "__metadata__": {str:
    str}}, read without the tensors; ModelFileError naming the file and why when it is not one."""
    try:
        return _read_header(path)
    except (OSError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise ModelFileError(path, ".safetensors file", str(exc)) from None


def _read_header(path: Path) -> dict:
    """8 bytes of length, then that many of JSON. A length past SAFETENSORS_HEADER_LIMIT is refused unread;
    a header, or tensor data, reaching past the end of the file is a truncated file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("an empty file" if not head else f"a file of {size} bytes, too short for a header")
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= SAFETENSORS_HEADER_LIMIT:
            raise ValueError(f"not a safetensors file: its first bytes give a header of {format_bytes(length)}, "
                             f"over the {format_bytes(SAFETENSORS_HEADER_LIMIT)} limit, not read")
        if 8 + length > size:
            raise ValueError(f"truncated file: the header alone takes {format_bytes(8 + length)}, "
                             f"the file has {format_bytes(size)}")
        header = json.loads(f.read(length))
    ends = [_data_end(value) for key, value in header.items() if key != "__metadata__"] \
        if isinstance(header, dict) else [None]
    if None in ends:
        raise ValueError("not a safetensors file: the header is not a table of tensors")
    expected = 8 + length + max(ends, default=0)
    if expected > size:
        raise ValueError(f"truncated file: the header says {format_bytes(expected)}, "
                         f"the file has {format_bytes(size)}")
    return header


def _data_end(tensor) -> int | None:
    """Where a header entry's data ends (its data_offsets' end), None when it is not a tensor entry."""
    offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
    if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o >= 0 for o in offsets):
        return offsets[1]
    return None


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors file's header; ModelFileError (a ValueError) naming the file when it
    is not one."""
    return [key for key in safetensors_header(path) if key != "__metadata__"]


def detect_v_prediction(path: Path, metadata: dict[str, str]) -> bool | None:
    """True/False when the file's metadata (modelspec, ours, kohya's) or an A1111-style sibling
    .yaml says which prediction type the model has, None when nothing does."""
    for key in ("modelspec.prediction_type", "studio.prediction_type", "prediction_type"):
        value = metadata.get(key, "").strip().lower()
        if value in ("v", "v_prediction", "v-prediction"):
            return True
        if value in ("epsilon", "eps"):
            return False
    if metadata.get("modelspec.architecture", "").endswith("-v"):
        return True
    if metadata.get("ss_v_parameterization", "").lower() == "true":
        return True
    yaml = path.with_suffix(".yaml")
    if yaml.is_file():
        text = yaml.read_text(encoding="utf-8", errors="replace")
        return re.search(r"^\s*parameterization:\s*[\"']?v[\"']?\s*$", text, re.M) is not None
    return None


def arch_by_names(path: Path) -> str | None:
    """sd1 / sd2 / sdxl / vae / unknown of an existing model path read from names alone (a diffusers folder's
    configs, a .safetensors header); None for a .ckpt, whose names are inside its pickle (see
    core.models.loading.model_arch)."""
    if path.is_dir():
        return arch_of_folder(path) if (path / "model_index.json").is_file() else "unknown"
    if path.suffix.lower() == ".safetensors":
        return arch_of_keys(safetensors_keys(path))
    return None
