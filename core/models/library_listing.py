"""The model library as the GUI lists it: table rows, filters, details, what a model can be used for, the
catalogue with what is downloaded already, and the last scan of this process (so the workspace can offer the
library's models without scanning again). Torch-free, like the scan itself (core/models/library.py).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from core.fsutil import format_bytes
from core.models.catalogue import CatalogueEntry, default_folder
from core.models.catalogue import entries as catalogue_entries
from core.models.detect import SD_ARCHS, detect_folder
from core.models.download import PARTIAL_SUFFIX
from core.models.library import Entry, scan
from core.models.library_folders import folder_problem, folders, install_model_folders
from core.workspace_checks import ARCH_NAMES

COLUMNS = ["name", "kind", "arch", "precision", "size", "problem", "path"]
CATALOGUE_COLUMNS = ["model", "kind", "size", "licence", "note", "status"]
FOLDER_COLUMNS = ["folder", "models", "note"]
KIND_LABELS = {"checkpoint": "checkpoint", "unet": "UNet", "vae": "VAE", "text_encoder": "text encoder",
               "lora": "LoRA", "embedding": "embedding", "diffusers": "diffusers model", "tagger": "tagger",
               "captioner": "captioner", "clip": "CLIP", "unknown": "unknown"}
ALL, WITH_PROBLEM = "all", "problem"  # the filter's values besides the kinds
BASE_MODEL_KINDS = ("checkpoint", "diffusers")
CATALOGUE_KINDS = {"checkpoint": BASE_MODEL_KINDS, "vae": ("vae",), "tagger": ("tagger",),
                   "captioner": ("captioner",)}  # the library kinds a catalogue entry downloads as
DOWNLOADED, PARTLY = "downloaded", "partly: Download continues"
METADATA_SHOWN = 40


# --- the last scan of this process ---------------------------------------------------------------------

_last: list[Entry] | None = None


def scan_library() -> list[Entry]:
    """Scan the library folders now; remembered as the last scan."""
    global _last
    _last = scan(folders())
    return _last


def last_scan() -> list[Entry] | None:
    """The models of the last scan in this process, None when there was none (nothing is scanned here)."""
    return _last


# --- the table ---------------------------------------------------------------------------------------

def arch_label(arch: str) -> str:
    """sd1 -> "SD 1.x", sd2-v -> "SD 2.x v-pred", unknown -> ""."""
    base = arch.removesuffix("-v")
    return ARCH_NAMES[base] + (" v-pred" if arch != base else "") if base in ARCH_NAMES else ""


def kind_label(entry: Entry) -> str:
    """"LoRA (locon)", "checkpoint (inpaint)", "tagger (wd14)": the kind with its family where it says more."""
    label = KIND_LABELS.get(entry.kind, entry.kind)
    shown = entry.family and entry.family != "lora" and entry.kind != "diffusers"
    return f"{label} ({entry.family})" if shown else label


def row(entry: Entry) -> list[str]:
    return [entry.name, kind_label(entry), arch_label(entry.arch), entry.precision, format_bytes(entry.size),
            entry.problem, entry.path]


def filtered(entries: list[Entry], kind: str = ALL) -> list[Entry]:
    """The entries the filter `kind` shows: all, those with a problem, or one kind."""
    if kind == WITH_PROBLEM:
        return [e for e in entries if e.problem]
    return [e for e in entries if kind in (ALL, None, "") or e.kind == kind]


def filter_choices(entries: list[Entry]) -> list[tuple[str, str]]:
    """(label with its count, value) for the kind filter: all, each kind found, those with a problem."""
    counts = Counter(e.kind for e in entries)
    choices = [(f"all ({len(entries)})", ALL)]
    choices += [(f"{KIND_LABELS.get(kind, kind)} ({counts[kind]})", kind) for kind in KIND_LABELS if counts[kind]]
    if problems := sum(1 for e in entries if e.problem):
        choices.append((f"with a problem ({problems})", WITH_PROBLEM))
    return choices


def summary(entries: list[Entry], folder_count: int) -> str:
    """One line: how many models in how many folders, and how many cannot be used."""
    text = f"{len(entries)} model{'s' if len(entries) != 1 else ''} in {folder_count} " \
           f"folder{'s' if folder_count != 1 else ''}"
    if problems := sum(1 for e in entries if e.problem):
        text += f" · {problems} with a problem (its reason in the table)"
    return text


# --- one model ---------------------------------------------------------------------------------------

def uses(entry: Entry) -> set[str]:
    """What a model can be used for here: "base_model" (an SD 1.x / 2.x / SDXL checkpoint or diffusers
    pipeline), "tagger" (a WD14 tagger folder), "captioner" (BLIP or a vision-language model); nothing for one
    with a problem."""
    if entry.problem:
        return set()
    if entry.kind in BASE_MODEL_KINDS and entry.arch.removesuffix("-v") in SD_ARCHS:
        return {"base_model"}
    if entry.kind in ("tagger", "captioner"):
        return {entry.kind}
    return set()


def details(entry: Entry) -> str:
    """The model in a few Markdown lines: name, what it is, its file or folder, its problem."""
    facts = [kind_label(entry), arch_label(entry.arch), entry.precision, entry.format, format_bytes(entry.size)]
    text = f"**{entry.name}** · {' · '.join(f for f in facts if f)}\n\n`{entry.path}`"
    if entry.problem:
        text += f"\n\n**Cannot be used:** {entry.problem}"
    elif not uses(entry):
        text += "\n\nNothing in the studio takes this kind of model from the library yet."
    return text


def metadata_rows(entry: Entry) -> list[list[str]]:
    """[key, value] of the model's metadata (a trained model's parameters, a folder's config facts)."""
    return [[str(k), str(v)] for k, v in list(entry.metadata.items())[:METADATA_SHOWN]]


def base_model_choices(recent: list[str], entries: list[Entry] | None) -> list[str]:
    """The workspace's base model choices: the recent values, then the library's usable base models."""
    library = [e.path for e in entries or [] if "base_model" in uses(e)]
    return list(dict.fromkeys([*recent, *library]))


# --- library folders ---------------------------------------------------------------------------------

def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.normcase(os.path.abspath(path)), os.path.normcase(os.path.abspath(folder))
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def found_in(entries: list[Entry], folder: str) -> Entry | None:
    """The first model of `entries` in `folder` (or at that path), None when there is none."""
    return next((e for e in entries if _inside(e.path, folder)), None)


def folder_rows(entries: list[Entry] | None) -> list[list[str]]:
    """[folder, models found in it at the last scan, note] of each library folder."""
    shown = folders()
    rows = []
    for index, folder in enumerate(shown):
        count = "" if entries is None else str(sum(1 for e in entries if _inside(e.path, folder)))
        note = folder_problem(folder) or ""
        if index == 0:
            note = "the studio's own (downloads go here)" + (f"; {note}" if note and Path(folder).exists() else "")
        rows.append([folder, count, note])
    return rows


def added_message(path: str, added: list[str]) -> str:
    """What adding `path` did, in one line: the install's model folders it added, or the folder itself."""
    if not added:
        return f"Nothing new: `{path.strip()}` (or its model folders) is already in the library."
    install = install_model_folders(path)
    if install and all(Path(p) in install for p in added):
        kind = "AUTOMATIC1111 / Forge" if any(p.name == "Stable-diffusion" for p in install) else "ComfyUI"
        names = ", ".join(Path(p).name for p in added)
        return f"Added {len(added)} folder{'s' if len(added) != 1 else ''} of the {kind} install: {names}."
    return f"Added `{added[0]}`."


# --- the catalogue -----------------------------------------------------------------------------------

def download_state(entry: CatalogueEntry) -> str:
    """Whether the catalogue model is in its default folder: DOWNLOADED (a usable model of its kind and no
    partial file), PARTLY (a partial file is there), or ""."""
    folder = default_folder(entry)
    if not folder.is_dir():
        return ""
    if any(p.name.endswith(PARTIAL_SUFFIX) for p in folder.rglob("*")):
        return PARTLY
    found = scan([folder])
    usable = [e for e in found if e.kind in CATALOGUE_KINDS[entry.kind] and not e.problem]
    return DOWNLOADED if usable and not any(e.problem for e in found) else ""


def size_text(size_gb: float) -> str:
    return f"{size_gb:g} GB" if size_gb >= 1 else f"{size_gb * 1000:.0f} MB"


def catalogue_rows(entries: list[CatalogueEntry] | None = None) -> list[list[str]]:
    """[label, kind, size, licence, note, state] of each catalogue entry (all of them by default)."""
    return [[e.label, KIND_LABELS[e.kind], size_text(e.size_gb), e.licence, e.note, download_state(e)]
            for e in (catalogue_entries() if entries is None else entries)]


def tagger_problem(folder: str | None) -> str | None:
    """Why `folder` is no WD14 tagger (None when it is one): not given, not found, no model.onnx and
    selected_tags.csv in it, or a broken one."""
    text = (folder or "").strip().strip('"')
    if not text:
        return "no tagger folder chosen"
    path = Path(os.path.expanduser(text))
    if not path.is_dir():
        return f"not found: {path}" if not path.exists() else f"{path} is a file, not a tagger folder"
    found = detect_folder(path)
    if found is None or found.kind != "tagger":
        return f"no model.onnx and selected_tags.csv in {path}"
    return found.problem or None
