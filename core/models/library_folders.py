"""The folders the model library lists: the studio's own `models/` folder always, plus the folders a person
adds (their AUTOMATIC1111 / Forge / ComfyUI model folders, any folder), remembered in
`<studio home>/model_library.json` ({"folders": [...]}). A file that cannot be read gives the studio's folder
alone and a problem naming it; it is set aside as `model_library.json.bad-<time>` before the next save.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from core.fsutil import atomic_write_json, models_root, studio_home

FILE_NAME = "model_library.json"
# The model subfolders of an install, by the subfolder that marks its layout (under <root>/models/).
INSTALL_LAYOUTS = (("Stable-diffusion", ("Stable-diffusion", "Lora", "LyCORIS", "VAE")),  # AUTOMATIC1111, Forge
                   ("checkpoints", ("checkpoints", "diffusion_models", "unet", "loras", "vae", "embeddings",
                                    "diffusers")))  # ComfyUI
A1111_EMBEDDINGS = "embeddings"  # AUTOMATIC1111 keeps textual inversions beside models/, not in it


def library_file() -> Path:
    return studio_home() / FILE_NAME


def _normal(path: str | os.PathLike) -> str:
    """A folder as stored: absolute, ~ expanded, surrounding spaces and quotes (Windows' "Copy as path")
    dropped."""
    text = str(path).strip().strip('"').strip()
    return os.path.abspath(os.path.expanduser(text)) if text else ""


def _same(a: str, b: str) -> bool:
    return os.path.normcase(a) == os.path.normcase(b)


def added_folders() -> tuple[list[str], str]:
    """(the folders a person added, why the file could not be read: "" when it could)."""
    path = library_file()
    if not path.exists():
        return [], ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stored = data.get("folders") if isinstance(data, dict) else None
        if not isinstance(stored, list):
            raise ValueError('expected {"folders": [...]}')
    except (OSError, ValueError) as exc:
        return [], f"could not read {path} ({exc}); it is kept aside when a folder is next added or removed"
    return list(dict.fromkeys(_normal(p) for p in stored if isinstance(p, str) and _normal(p))), ""


def folders() -> list[str]:
    """Every library folder: the studio's models folder first, then the added ones in the order added."""
    own = str(models_root())
    return [own, *(p for p in added_folders()[0] if not _same(p, own))]


def _save(added: list[str]) -> None:
    path = library_file()
    if added_folders()[1]:
        path.rename(path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}"))
    atomic_write_json(path, {"folders": added})


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be a library folder (not given, not found, a file), None when it can."""
    folder = _normal(path)
    if not folder:
        return "give a folder"
    if not os.path.exists(folder):
        return f"not found: {folder}"
    if not os.path.isdir(folder):
        return f"{folder} is a file: choose the folder that holds the models"
    return None


def install_model_folders(folder: str | os.PathLike) -> list[Path]:
    """The model folders of an AUTOMATIC1111 / Forge / ComfyUI install that exist, given its root, its
    models/ folder or ComfyUI portable's outer folder; [] when `folder` is none of these. A layout is known
    by its marking subfolder (Stable-diffusion, checkpoints); a folder taken as models/ itself needs one
    more of the layout's subfolders, so an ordinary folder that happens to hold a `checkpoints` folder is
    taken as it is."""
    root = Path(_normal(folder))
    for models, least in ((root / "models", 1), (root / "ComfyUI" / "models", 1), (root, 2)):
        for marker, names in INSTALL_LAYOUTS:
            found = [models / name for name in names if (models / name).is_dir()]
            if (models / marker).is_dir() and len(found) >= least:
                embeddings = models.parent / A1111_EMBEDDINGS
                if marker == "Stable-diffusion" and embeddings.is_dir():
                    found.append(embeddings)
                return found
    return []


def add_folder(path: str | os.PathLike) -> list[str]:
    """Remember a folder (an install's root or models/ folder adds its model folders instead); returns the
    folders added (none when all were already there). ValueError saying why it cannot be added."""
    library = folders()
    if any(_same(_normal(path), known) for known in library):
        return []
    if problem := folder_problem(path):
        raise ValueError(problem)
    new = [str(p) for p in install_model_folders(path)] or [_normal(path)]
    added = [p for p in new if not any(_same(p, known) for known in library)]
    if added:
        _save([*added_folders()[0], *added])
    return added


def remove_folder(path: str | os.PathLike) -> None:
    """Forget a folder (its files are not touched); the studio's models folder always stays."""
    folder = _normal(path)
    if _same(folder, str(models_root())):
        raise ValueError("the studio's own models folder is always in the library")
    stored = added_folders()[0]
    if not any(_same(folder, p) for p in stored):
        raise ValueError(f"{folder} is not a library folder")
    _save([p for p in stored if not _same(p, folder)])
