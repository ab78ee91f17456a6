"""The model library: every model in a person's folders, listed from headers and configs alone.

`scan(folders)` walks the folders (MAX_DEPTH deep, hidden folders, environments and our own run, cache and
training-state folders left out) and returns an Entry for each model: single files (.safetensors, .ckpt,
.pt, .pth, .bin) and model folders (diffusers pipelines and components, WD14 taggers, transformers
captioners). Nothing is loaded: a .safetensors file's header is read (core/models/arch.py), a PyTorch
checkpoint's pickle by a restricted reader that runs none of it (core/models/pickle_scan.py), a folder's
JSON configs; the rules are in core/models/detect.py. No torch, so a folder of a hundred checkpoints lists in
seconds. A file that cannot be read is listed with the reason (`problem`), never raised.

    python -m core models [--scan DIR ...]   (the library folders when no --scan; one JSON document)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from core.filenames import MODEL_SUFFIXES
from core.fsutil import runs_root, studio_home
from core.models.arch import ModelFileError, detect_v_prediction, safetensors_header
from core.models.detect import SD_ARCHS, Detected, detect_folder, detect_tensors, precision_of
from core.models.library_folders import folder_problem, folders
from core.models.pickle_scan import NotACheckpoint, TensorInfo, pickle_tensors

MAX_DEPTH = 4  # how many folders down from a library folder are looked into (models/checkpoints/<name>/)
SKIP_FOLDERS = {"__pycache__", "venv", "node_modules", "site-packages"}
STUDIO_SKIP = ("backups", "locks", "presets")  # the studio's own folders beside runs/ that hold no models
STATE_FOLDER = re.compile(r"-state(\.partial)?$")  # a training run's resumable state (core/train/checkpoints.py)
LATENT_CACHE_SUFFIX = ".latents.safetensors"  # core/dataset/latents.py CACHE_SUFFIX: a cache, not a model
BULKY_METADATA = {"ss_tag_frequency", "ss_bucket_info", "ss_datasets", "studio.configs", "modelspec.thumbnail"}
METADATA_MAX_KEYS = 64
METADATA_MAX_CHARS = 200


@dataclass
class Entry:
    """One model in the library (to_dict() is its JSON form)."""
    path: str
    name: str
    kind: str                # see core.models.detect.KINDS
    arch: str = "unknown"    # sd1 / sd2 / sdxl / unknown, "-v" added for v-prediction (sd2-v)
    family: str = ""         # lora / locon / loha / lokr; inpaint; wd14; blip, florence2, qwen2.5-vl, ...
    format: str = ""         # safetensors / pickle / diffusers / transformers / onnx
    size: int = 0            # bytes (a folder: all its files)
    precision: str = ""      # fp16 / bf16 / fp32 / fp8 / mixed, "" when unknown
    metadata: dict = field(default_factory=dict)  # a .safetensors file's (useful part), a folder's config facts
    problem: str = ""        # why the model cannot be used, "" when it can

    def to_dict(self) -> dict:
        return asdict(self)


def small_metadata(metadata: Mapping) -> dict[str, str]:
    """The metadata worth showing: bulky keys (tag frequencies, bucket tables, configs, thumbnails) left
    out, at most METADATA_MAX_KEYS keys, each value cut to METADATA_MAX_CHARS characters."""
    kept = sorted((str(k), str(v)) for k, v in metadata.items() if k not in BULKY_METADATA)[:METADATA_MAX_KEYS]
    return {k: v if len(v) <= METADATA_MAX_CHARS else v[:METADATA_MAX_CHARS - 1] + "…" for k, v in kept}


def _with_prediction(found: Detected, path: Path, metadata: Mapping[str, str]) -> str:
    """The architecture with "-v" where the metadata or a sibling .yaml says v-prediction."""
    if found.kind in ("checkpoint", "unet", "lora") and found.arch in SD_ARCHS \
            and detect_v_prediction(path, dict(metadata)):
        return found.arch + "-v"
    return found.arch


def _read_tensors(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], str]:
    """(tensors, metadata, format) of a single file; ValueError (UnsafePickle, ModelFileError) saying why not."""
    if path.suffix.lower() == ".safetensors":
        try:
            header = safetensors_header(path)
        except ModelFileError as exc:
            raise ValueError(exc.reason) from None
        raw = header.pop("__metadata__", None)
        metadata = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        return ({k: TensorInfo(str(v.get("dtype", "?")), tuple(v.get("shape") or ())) for k, v in header.items()},
                metadata, "safetensors")
    return pickle_tensors(path), {}, "pickle"


def file_entry(path: Path) -> Entry | None:
    """The Entry of a single model file; None for a .bin that is no PyTorch file (any binary may end so)."""
    entry = Entry(str(path), path.stem, "unknown", size=_size(path))
    try:
        tensors, metadata, entry.format = _read_tensors(path)
    except NotACheckpoint as exc:
        if path.suffix.lower() == ".bin":
            return None
        entry.problem, entry.format = str(exc), "pickle"
        return entry
    except ValueError as exc:  # UnsafePickle included: its reason names what the pickle imports
        entry.problem = str(exc)
        entry.format = "safetensors" if path.suffix.lower() == ".safetensors" else "pickle"
        return entry
    found = detect_tensors(tensors, metadata)
    entry.kind, entry.family = found.kind, found.family
    entry.arch = _with_prediction(found, path, metadata)
    entry.precision = precision_of(info.dtype for info in tensors.values())
    entry.metadata = small_metadata(metadata)
    if not tensors:
        entry.problem = "no tensors in this file"
    return entry


def folder_entry(folder: Path, found: Detected) -> Entry:
    """The Entry of a model folder: its size, and the precision of its .safetensors weights (a broken one is
    its problem)."""
    is_diffusers = found.kind == "diffusers" or "_class_name" in found.metadata
    fmt = "onnx" if found.kind == "tagger" else "diffusers" if is_diffusers else "transformers"
    entry = Entry(str(folder), folder.name, found.kind, found.arch, found.family, fmt, _size(folder),
                  metadata=found.metadata, problem=found.problem)
    weights = [*folder.glob("*.safetensors"), *folder.glob("*/*.safetensors")]
    # diffusers' variant files (model.fp16.safetensors) beside the plain ones would read as "mixed"
    weights = [p for p in weights if "." not in p.stem] or weights
    dtypes = []
    for weight in sorted(weights):
        try:
            header = safetensors_header(weight)
        except ModelFileError as exc:
            entry.problem = entry.problem or f"{weight.relative_to(folder).as_posix()}: {exc.reason}"
            continue
        dtypes += [v.get("dtype", "") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    entry.precision = precision_of(dtypes)
    return entry


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _skipped_folders() -> set[str]:
    """The studio's own folders that hold runs, caches and backups, not models to list."""
    home = studio_home()
    return {os.path.normcase(os.path.realpath(p)) for p in (runs_root(), *(home / name for name in STUDIO_SKIP))}


def _is_model_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(MODEL_SUFFIXES) and not name.endswith(LATENT_CACHE_SUFFIX)


def scan(library_folders: Iterable[str | os.PathLike], max_depth: int = MAX_DEPTH) -> list[Entry]:
    """Every model in the folders (or files) given, in the order found; a path listed twice (or reached
    through two folders or a link) once. Folders that do not exist are passed over (see
    core.models.library_folders.folder_problem)."""
    entries: list[Entry] = []
    seen: set[str] = set()
    skipped = _skipped_folders()

    def visit(path: Path, depth: int) -> None:
        real = os.path.normcase(os.path.realpath(path))
        if real in seen or real in skipped:
            return
        seen.add(real)
        if path.is_file():
            if _is_model_file(path) and (entry := file_entry(path)) is not None:
                entries.append(entry)
            return
        if depth > max_depth:
            return
        if (found := detect_folder(path)) is not None:
            entries.append(folder_entry(path, found))
            return
        try:
            children = sorted(os.scandir(path), key=lambda e: e.name.lower())
        except OSError:
            return
        for child in children:
            is_dir = child.is_dir()
            if is_dir and (child.name.startswith(".") or child.name in SKIP_FOLDERS or STATE_FOLDER.search(child.name)):
                continue
            if is_dir or _is_model_file(Path(child.name)):
                visit(Path(child.path), depth + 1)

    for folder in library_folders:
        path = Path(os.path.abspath(os.path.expanduser(str(folder))))
        if path.exists():
            visit(path, 0)
    return entries


def main(argv: list[str] | None = None) -> int:
    """`python -m core models [--scan DIR ...]`: the models as one JSON document on stdout:
    {"folders": [{"path", "problem"}], "models": [Entry.to_dict(), ...]}."""
    parser = argparse.ArgumentParser(
        prog="python -m core models",
        description="List the models in folders (headers and configs only, nothing is loaded) as JSON.")
    parser.add_argument("--scan", action="append", default=[], metavar="DIR",
                        help="a folder (or model file) to list; repeatable; default: the library folders "
                             "(the studio's models/ folder and those added in the GUI)")
    args = parser.parse_args(argv)
    roots = args.scan or folders()
    report = {"folders": [{"path": os.path.abspath(os.path.expanduser(p)),
                           "problem": "" if Path(p).expanduser().is_file() else folder_problem(p) or ""}
                          for p in roots],
              "models": [entry.to_dict() for entry in scan(roots)]}
    json.dump(report, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0
