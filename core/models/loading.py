"""Loading models from what users have on disk: diffusers folders and single-file checkpoints.

A model path is one of
  - a diffusers pipeline folder (model_index.json, vae/, unet/, ...),
  - a diffusers component folder (config.json naming the class, e.g. a separate VAE),
  - one .safetensors or .ckpt file in the original SD layout (a full checkpoint, or a VAE alone).
Single files are read offline: the architecture is recognised from the key names, the component
configs are inferred from tensor shapes, and keys are converted by diffusers' own single-file
conversion functions, then loaded with strict key checking. `.ckpt` files are read with
weights-only unpickling. Every problem is a ValueError naming the file.

The whole-model API (SDModel, load_sd_model, save_sd_model) lives in core.models.sd and is
also reachable from here.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from core.filenames import MODEL_SUFFIXES
from core.models.arch import ModelFileError, arch_by_names, arch_of_keys, read_json

SCALING_FACTORS = {"sdxl": 0.13025}  # every other SD family: 0.18215
DEFAULT_SCALING_FACTOR = 0.18215
# Prefixes of the VAE inside a full original-layout checkpoint (as diffusers' LDM_VAE_KEYS).
VAE_PREFIXES = ("first_stage_model.", "vae.")
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


class Checkpoint:
    """One single-file checkpoint: key names without reading tensors, then tensors on demand.

    .safetensors are memory-mapped by safetensors; .ckpt files are read with
    `torch.load(weights_only=True)` (memory-mapped when saved in the zip format)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._handle = None
        self._tensors: dict[str, torch.Tensor] | None = None
        self.metadata: dict[str, str] = {}  # the safetensors header's strings; none in .ckpt
        try:
            if self.path.suffix.lower() == ".safetensors":
                from safetensors import safe_open

                self._handle = safe_open(str(self.path), framework="pt")
                self.keys = list(self._handle.keys())
                self.metadata = dict(self._handle.metadata() or {})
            else:
                self._tensors = _torch_state_dict(self.path)
                self.keys = list(self._tensors)
        except Exception as exc:
            raise ValueError(_unreadable_message(self.path, exc)) from None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self._handle = self._tensors = None

    def tensors(self, select: Callable[[str], bool]) -> dict[str, torch.Tensor]:
        """The tensors whose keys `select` accepts."""
        try:
            if self._handle is not None:
                return {k: self._handle.get_tensor(k) for k in self.keys if select(k)}
            return {k: self._tensors[k] for k in self.keys if select(k)}
        except Exception as exc:
            raise ValueError(f"{self.path}: cannot read the tensors, the file is damaged "
                             f"({type(exc).__name__}: {exc})") from None


def _unreadable_message(path: Path, exc: Exception) -> str:
    """Why a checkpoint cannot be read, without torch's advice to unpickle it in full (which would
    run any code in it); a pickle naming a Python object besides tensors is refused as such."""
    text = str(exc)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return (f"{path}: cannot read this checkpoint: it holds Python objects besides tensors ({found.group(1)}), "
                "which could run code when opened, so it is refused. Use a .safetensors version of this model.")
    detail = text.partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0].strip() or text
    return str(ModelFileError(path, "checkpoint", f"{type(exc).__name__}: {detail}"))


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def model_arch(model_path: str | os.PathLike) -> str:
    """The architecture of a model path (folder or single file), by names only."""
    path = existing_path(model_path)
    if (arch := arch_by_names(path)) is not None:
        return arch
    with Checkpoint(path) as ckpt:  # a .ckpt: its pickle is read (weights only) for the names
        return arch_of_keys(ckpt.keys)


def existing_path(path: str | os.PathLike) -> Path:
    """The path, expanded; ValueError when it does not exist or is not a model file/folder."""
    if not str(path).strip():
        raise ValueError("no model path given")
    resolved = Path(os.path.expanduser(str(path))).resolve()
    if not resolved.exists():
        raise ValueError(f"{resolved}: model path not found")
    if resolved.is_file() and resolved.suffix.lower() not in MODEL_SUFFIXES:
        raise ValueError(f"{resolved}: not a model file (expected "
                         f"{', '.join(MODEL_SUFFIXES)} or a diffusers folder)")
    return resolved


def weights_identity(module: torch.nn.Module) -> str:
    """sha256 over sorted parameter names, shapes and values as float32: the same weights give
    the same hash whatever file layout or storage precision they were loaded from."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class VaeInfo:
    source: str            # the file or folder the VAE weights came from
    layout: str            # diffusers-pipeline, diffusers-vae or single-file
    arch: str              # the base model's family: sd1, sd2, sdxl, or unknown
    separate_vae: bool     # the VAE came from `vae_path`, not from the base model
    scaling_factor: float  # latents * scaling_factor is what the UNet sees
    identity: str          # weights_identity of the VAE
    parameters: int

    @property
    def original_sdxl_vae(self) -> bool:
        """SDXL's own VAE overflows in fp16; a separate (fixed) VAE may not."""
        return self.arch == "sdxl" and not self.separate_vae

    def as_dict(self) -> dict:
        return {**asdict(self), "original_sdxl_vae": self.original_sdxl_vae}


def load_vae(model_path: str | os.PathLike, vae_path: str | os.PathLike = ""):
    """(AutoencoderKL in fp32 on the CPU, VaeInfo) for a base model and an optional separate VAE.

    The scaling factor follows the base model (its VAE config in a diffusers folder, else 0.13025
    for SDXL and 0.18215 for SD 1.x/2.x), since it is the base model's UNet that uses the
    latents."""
    base = existing_path(model_path)
    arch = model_arch(base)
    source = existing_path(vae_path) if str(vae_path).strip() else base
    vae, layout = _load_autoencoder(source)
    vae.register_to_config(scaling_factor=_scaling_factor(base, arch))
    vae.eval().requires_grad_(False)
    info = VaeInfo(str(source), layout, arch, source != base, float(vae.config.scaling_factor),
                   weights_identity(vae), sum(p.numel() for p in vae.parameters()))
    return vae, info


def _scaling_factor(base: Path, arch: str) -> float:
    config = base / "vae" / "config.json"
    if base.is_dir() and config.is_file():
        return float(read_json(config).get("scaling_factor", DEFAULT_SCALING_FACTOR))
    return SCALING_FACTORS.get(arch, DEFAULT_SCALING_FACTOR)


def _load_autoencoder(source: Path):
    """(AutoencoderKL fp32, layout name) from a folder or a single file."""
    from diffusers import AutoencoderKL

    if source.is_file() and _is_vae_folder(source.parent):
        source = source.parent  # the weights file inside a diffusers VAE folder
    if source.is_dir():
        if (source / "model_index.json").is_file():
            if not (source / "vae" / "config.json").is_file():
                raise ValueError(f"{source}: diffusers folder without a vae/ subfolder")
            folder, subfolder, layout = source, "vae", "diffusers-pipeline"
        elif _is_vae_folder(source):
            folder, subfolder, layout = source, None, "diffusers-vae"
        else:
            raise ValueError(f"{source}: not a diffusers pipeline folder (model_index.json) nor a "
                             "VAE folder (config.json of an AutoencoderKL)")
        try:
            vae = AutoencoderKL.from_pretrained(folder, subfolder=subfolder, local_files_only=True,
                                                torch_dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{source}: cannot load the VAE ({exc})") from None
        return vae.float(), layout
    return _vae_from_single_file(source), "single-file"


def _is_vae_folder(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and read_json(config).get("_class_name") == "AutoencoderKL"


def _vae_from_single_file(path: Path):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    with Checkpoint(path) as ckpt:
        prefix = next((p for p in VAE_PREFIXES if f"{p}encoder.conv_in.weight" in ckpt.keys), "")
        if not prefix and "encoder.conv_in.weight" not in ckpt.keys:
            raise ValueError(_no_vae_message(path, ckpt.keys))
        sd = ckpt.tensors(lambda k: k.startswith(prefix) and k[len(prefix):].startswith(VAE_PARTS))
        arch = arch_of_keys(ckpt.keys)
    sd = {k[len(prefix):]: v.float() for k, v in sd.items()}
    if any(".down_blocks." in k for k in sd):
        raise ValueError(f"{path}: a VAE in the diffusers layout; load its folder (with "
                         "config.json) instead of the weights file alone")
    config = vae_config_from_ldm(sd, arch)
    converted = convert_ldm_vae_checkpoint(sd, config)
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    try:
        vae.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the VAE weights do not match the inferred architecture "
                         f"{config['block_out_channels']} ({exc})") from None
    return vae


def _no_vae_message(path: Path, keys: list[str]) -> str:
    if any("lora_" in k or ".alpha" in k for k in keys[:1000]):
        kind = "it looks like a LoRA, which has no VAE"
    elif arch_of_keys(keys) in ("sd1", "sd2", "sdxl"):
        kind = "a checkpoint without its VAE (first_stage_model.*): choose a separate VAE"
    else:
        kind = f"{len(keys)} tensors, none of them a VAE's (e.g. {keys[:3]})"
    return f"{path}: no VAE weights in this file: {kind}"


def vae_config_from_ldm(sd: dict[str, torch.Tensor], arch: str = "unknown") -> dict:
    """AutoencoderKL config from the shapes of an original-layout VAE state dict (no prefix).

    GroupNorm's group count is not visible in the shapes: SD uses 32; smaller models get the
    largest divisor of 32 that divides their narrowest level (8 for the demo's 8 channels)."""
    levels = 1 + max(_indices(sd, r"encoder\.down\.(\d+)\."))
    blocks = _indices(sd, r"encoder\.down\.0\.block\.(\d+)\.")
    channels = [int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(levels)]
    return {
        "in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": len(blocks),
        "latent_channels": int(sd["decoder.conv_in.weight"].shape[1]),
        "norm_num_groups": math.gcd(32, min(channels)),
        "sample_size": 1024 if arch == "sdxl" else 512,
        "scaling_factor": SCALING_FACTORS.get(arch, DEFAULT_SCALING_FACTOR),
        "use_quant_conv": "quant_conv.weight" in sd,
        "use_post_quant_conv": "post_quant_conv.weight" in sd,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in sd,
    }


def _indices(sd: dict, pattern: str) -> set[int]:
    """The numbers captured by `pattern` at the start of the keys."""
    return {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
