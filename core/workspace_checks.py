"""Quick checks of the workspace's paths, each a one-line answer for the GUI: names and headers only.

Nothing here imports torch: a model is recognised from its names (diffusers configs, a .safetensors header);
only a .ckpt needs the model loader (and torch) to read the names in its pickle. Weights are never read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from core.dataset.discovery import parse_repeat_folder
from core.dataset.images import is_image_file
from core.filenames import MODEL_SUFFIXES
from core.fsutil import format_bytes, free_bytes
from core.models.arch import arch_by_names

IMAGE_COUNT_CAP = 10_000  # a folder with more images reads "10000+ images" (counting stops there)
ARCH_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


class Check(NamedTuple):
    ok: bool
    text: str  # one line; "" when there is nothing to check
    model_arch: str | None = None  # sd1 / sd2 / sdxl for a usable base model


def _expand(path: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def count_images(folder: Path, cap: int = IMAGE_COUNT_CAP) -> tuple[int, list[str]]:
    """(images under the folder, stopping at `cap`; names of its kohya `N_name` folders), by names only.
    Hidden files and folders are skipped, as in core.dataset.discovery."""
    count, repeat_folders = 0, []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if parse_repeat_folder(Path(dirpath).name):
            repeat_folders.append(Path(dirpath).name)
        count += sum(1 for name in filenames if not name.startswith(".") and is_image_file(name))
        if count >= cap:
            return cap, repeat_folders
    return count, repeat_folders


def _dataset_folder_problem(path: Path) -> str | None:
    if not path.exists():
        return f"not found: {path}"
    if not path.is_dir():
        return f"{path} is a file, not a folder (a dataset is a folder of images)"
    return None


def check_dataset(folders: list[str]) -> Check:
    """Each folder exists and holds images; how many, and its kohya repeat folders."""
    if not folders:
        return Check(True, "")
    total, capped, repeat_folders = 0, False, []
    for folder in folders:
        path = _expand(folder)
        if problem := _dataset_folder_problem(path):
            return Check(False, problem)
        count, repeats = count_images(path)
        if count == 0:
            return Check(False, f"no images found in {path}")
        total += count
        capped = capped or count >= IMAGE_COUNT_CAP
        repeat_folders += repeats
    text = f"{total}{'+' if capped else ''} images"
    if len(folders) > 1:
        text += f" in {len(folders)} folders"
    if repeat_folders:
        shown = ", ".join(_repeat_label(name) for name in repeat_folders[:4])
        text += f" · repeats: {shown}" + (f" (+{len(repeat_folders) - 4} more)" if len(repeat_folders) > 4 else "")
    return Check(True, text)


def _repeat_label(name: str) -> str:
    repeats, _ = parse_repeat_folder(name)
    return f"{name} ×{repeats}" if repeats else f"{name} (0 repeats: kohya skips it)"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_model(model: str) -> Check:
    """The base model exists and is an SD 1.x / 2.x / SDXL checkpoint (single file or diffusers folder)."""
    if not model:
        return Check(True, "")
    path = _expand(model)
    if not path.exists():
        return Check(False, f"not found: {path}")
    not_a_model = f"{path} is not a Stable Diffusion checkpoint"
    if path.is_dir() and not (path / "model_index.json").is_file():
        return Check(False, f"{not_a_model}: a folder without model_index.json (choose a diffusers model "
                            "folder or a .safetensors/.ckpt file)")
    if path.is_file() and path.suffix.lower() not in MODEL_SUFFIXES:
        return Check(False, f"{not_a_model}: expected a {', '.join(MODEL_SUFFIXES)} file or a diffusers folder")
    try:
        arch = arch_by_names(path)
        if arch is None:  # a .ckpt: its names are in its pickle, which torch reads
            from core.models.loading import model_arch

            arch = model_arch(path)
    except ValueError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        return Check(False, f"{not_a_model}: {reason}")
    if arch not in ARCH_NAMES:
        what = "it holds a VAE alone" if arch == "vae" else "none of the SD 1.x / 2.x / SDXL weight names are in it"
        return Check(False, f"{not_a_model}: {what}")
    kind = "diffusers folder" if path.is_dir() else "single file"
    text = f"{ARCH_NAMES[arch]} · {kind} · {format_bytes(_size(path))}"
    if path.suffix.lower() == ".ckpt":
        text += " · .ckpt: read weights-only (a .safetensors is safer and faster)"
    return Check(True, text, model_arch=arch)


def check_output(folder: str) -> Check:
    """The output folder is a writable folder, or can be created."""
    if not folder:
        return Check(True, "")
    path = _expand(folder)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return Check(False, f"{existing} is a file: choose a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check(False, f"cannot write in {existing}: choose a folder of yours")
    free = f"{format_bytes(free_bytes(existing))} free"
    return Check(True, f"writable · {free}" if existing == path else f"will be created · {free}")


CHECKS = {"dataset": check_dataset, "model": check_model, "output": check_output}


def check_slot(slot: str, value) -> Check:
    return CHECKS[slot](value)


def facts(model_check: Check) -> dict:
    """What the forms need to know of the workspace (which fields apply): the base model's architecture."""
    return {"model_arch": model_check.model_arch}
