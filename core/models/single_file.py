"""Single-file .safetensors checkpoints (the files AUTOMATIC1111 and ComfyUI load)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch

from core.fsutil import atomic_path, remove_stale_temps

# Stability AI's model spec (https://github.com/Stability-AI/ModelSpec), as kohya writes it.
MODELSPEC_ARCHITECTURES = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sd2v": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
}


def modelspec_metadata(arch: str, title: str, v_prediction: bool) -> dict[str, str]:
    """The `modelspec.*` metadata keys describing a checkpoint of `arch`."""
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCHITECTURES[arch],
        "modelspec.implementation": "https://github.com/Stability-AI/"
                                    + ("generative-models" if arch == "sdxl" else "stablediffusion"),
        "modelspec.title": title,
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
    }


def _metadata_strings(metadata: Mapping | None) -> dict[str, str]:
    """safetensors metadata must be str -> str: other values are stored as JSON."""
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}


def _prepare(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Cast floating tensors to `dtype`, move to CPU, and give every tensor its own storage."""
    out, seen = {}, set()
    for key, tensor in state_dict.items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.to("cpu").contiguous()
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def save_single_file(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor],
                     dtype: torch.dtype | None = None, metadata: Mapping | None = None) -> Path:
    """Write `state_dict` as one .safetensors file, atomically; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    remove_stale_temps(path)  # of a save that was killed: a model-sized file each
    with atomic_path(path, saved_bytes(state_dict.values(), dtype)) as tmp:  # streamed: no second copy in memory
        save_file(_prepare(state_dict, dtype), str(tmp), metadata=_metadata_strings(metadata))
    return path


def saved_bytes(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None = None) -> int:
    """About how many bytes `tensors` take in a file, the floating ones cast to `dtype`."""
    return sum(t.numel() * (dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size())
               for t in tensors)
