"""What the studio's file names may be: the extensions it reads as images and models, and the rules for
names a user types (a model's output name, a caption extension). A leaf: imports nothing of the project,
so the settings (core/config) and the readers (core/dataset, core/models) share one declaration."""
from __future__ import annotations

import re

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif")  # .avif: if Pillow has it
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
WD14_FILES = ("model.onnx", "selected_tags.csv")  # a WD14 tagger folder (SmilingWolf's repositories)
CACHE_SUFFIXES = (".npz",)  # kohya's latent cache; ours ends in .safetensors
# Names Windows reserves for devices, with any extension (CON, CON.txt): a file cannot have them there.
WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)
FORBIDDEN_CHARACTERS = '/\\:*?"<>|'
MAX_STEM_BYTES = 160  # leaves room for "-step00000100-ema.safetensors" and a temp name under 255 bytes


def file_stem_problem(name: str) -> str | None:
    """Why `name` cannot be the stem of a file on Windows, macOS and Linux alike, None when it can."""
    if not name.strip():
        return "give a name"
    if name in (".", "..") or name.rstrip(". ") == "":
        return f"{name!r} names a folder, not a file: give a name like my-model"
    if bad := sorted({c for c in name if c in FORBIDDEN_CHARACTERS or ord(c) < 32}):
        shown = " ".join(repr(c)[1:-1] for c in bad)
        return f"must not contain {shown} (not allowed in file names on Windows)"
    if name != name.rstrip(". "):
        return "must not end with a dot or a space (Windows drops them, so the file would get another name)"
    if WINDOWS_RESERVED.match(name):
        return f"{name.split('.')[0]} is a device name on Windows: choose another name"
    if len(name.encode("utf-8")) > MAX_STEM_BYTES:
        return f"is {len(name.encode('utf-8'))} bytes long; keep it under {MAX_STEM_BYTES} (file names stop at 255)"
    return None


def caption_extension_problem(extension: str) -> str | None:
    """Why `extension` cannot be the extension of caption files, None when it can: a caption job writes
    text into every file with it, so it must not be one of the images' or models' own."""
    if not extension.startswith(".") or len(extension) < 2 or any(c in FORBIDDEN_CHARACTERS for c in extension):
        return "must start with a dot, like .txt or .caption"
    if (lower := extension.lower()) in IMAGE_SUFFIXES + MODEL_SUFFIXES + CACHE_SUFFIXES:
        kind = "an image" if lower in IMAGE_SUFFIXES else "a model or cache"
        return (f"{extension} is {kind} extension: caption jobs would write text over those files; use .txt or "
                ".caption")
    return None
