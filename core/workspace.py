"""The workspace: the dataset folder(s), base model and output folder every tab starts from, chosen once.

Kept with the recent values of each (most recent first) in `<studio home>/workspace.json`. A file that
cannot be read gives an empty workspace and a message naming it; it is set aside as
`workspace.json.bad-<time>` before the next save, never overwritten silently.
"""
from __future__ import annotations

import json
import os
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.fsutil import atomic_write_json, studio_home

SLOTS = ("dataset", "model", "output")
LABELS = {"dataset": "Dataset folder(s)", "model": "Base model", "output": "Output folder"}
FOLDER_SLOTS = ("dataset", "output")  # a folder, never a file; "model" is a file or a diffusers folder
MAX_RECENT = 10
FILE_NAME = "workspace.json"
FOLDER_SEPARATOR = " | "  # between dataset folders in one line of text ("|" is not allowed in Windows names)


@dataclass
class Workspace:
    dataset: list[str] = field(default_factory=list)
    model: str = ""
    output: str = ""
    recent: dict[str, list[str]] = field(default_factory=lambda: {slot: [] for slot in SLOTS})
    problem: str = ""  # why the file could not be read (the workspace is then empty)

    def value(self, slot: str) -> list[str] | str:
        return getattr(self, slot)

    def values(self) -> dict:
        """{slot: value}: what the forms are filled from."""
        return {slot: self.value(slot) for slot in SLOTS}


def workspace_file() -> Path:
    return studio_home() / FILE_NAME


def _clean(value) -> str:
    return str(value).strip().strip('"').strip() if isinstance(value, (str, os.PathLike)) else ""


def normalize(slot: str, value) -> list[str] | str:
    """A slot's value as typed or stored -> its clean form: a list of folders (dataset: in a text one per
    line or separated by "|"; no blanks or repeats) or one path ("" for none). Surrounding spaces and
    quotes (Windows' "Copy as path") are dropped."""
    if slot == "dataset":
        items = value.replace("|", "\n").splitlines() if isinstance(value, str) else (value or [])
        return list(dict.fromkeys(p for p in map(_clean, items) if p))
    return _clean(value or "")


def load() -> Workspace:
    """The saved workspace; empty when there is none or the file cannot be read (`problem` says why)."""
    path = workspace_file()
    if not path.exists():
        return Workspace()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
    except (OSError, ValueError) as exc:
        return Workspace(problem=f"could not read {path} ({exc}); starting with an empty workspace, "
                                 "the file is kept aside on the next save")
    recent = data.get("recent") if isinstance(data.get("recent"), dict) else {}
    return Workspace(**{slot: normalize(slot, data.get(slot)) for slot in SLOTS},
                     recent={slot: normalize("dataset", recent.get(slot))[:MAX_RECENT] for slot in SLOTS})


def save(workspace: Workspace) -> None:
    """Write the workspace; a file that could not be read is first renamed aside (workspace.json.bad-<time>)."""
    path = workspace_file()
    if workspace.problem and path.exists():
        path.rename(path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}"))
        workspace.problem = ""
    atomic_write_json(path, {**workspace.values(), "recent": workspace.recent})


def remember(workspace: Workspace, slot: str, paths: list[str]) -> None:
    """Put paths first in the slot's recent values (no repeats, at most MAX_RECENT)."""
    workspace.recent[slot] = list(dict.fromkeys([*paths, *workspace.recent[slot]]))[:MAX_RECENT]


def set_slot(workspace: Workspace, slot: str, value, usable: bool) -> Workspace:
    """Choose a slot's value; a usable one (its check passed) joins the recent values."""
    value = normalize(slot, value)
    setattr(workspace, slot, value)
    if usable and value:
        remember(workspace, slot, [line_text(value)])
    return workspace


def field_text(value: list[str] | str, one_per_line: bool) -> str:
    """A slot's value as a form field shows it: the dataset's folders one per line (the first alone in a
    one-path field)."""
    if isinstance(value, list):
        return "\n".join(value) if one_per_line else (value[0] if value else "")
    return value


def shorten_paths(text: str, value: list[str] | str, keep: int = 2) -> str:
    """`text` with the value's paths cut to their last `keep` parts ("…/kit/model.safetensors"), so that a
    one-line answer about a long path still shows what is wrong with it."""
    for path in value if isinstance(value, list) else [value]:
        full = Path(os.path.abspath(os.path.expanduser(path))) if path else None
        if full and len(full.parts) > keep + 1:
            text = text.replace(str(full), os.path.join("…", *full.parts[-keep:]))
    return text


def line_text(value: list[str] | str) -> str:
    """A slot's value in one line (the workspace bar): dataset folders joined by FOLDER_SEPARATOR."""
    return FOLDER_SEPARATOR.join(value) if isinstance(value, list) else value


# --- browsing (the file picker) ----------------------------------------------------------------------

def drives() -> list[str]:
    """The drive letters on Windows (C:\\, D:\\, ...); nothing elsewhere."""
    if os.name != "nt":
        return []
    return [f"{letter}:\\" for letter in string.ascii_uppercase if os.path.exists(f"{letter}:\\")]


def start_folder(value: list[str] | str) -> str:
    """Where a picker opens for a slot's value: the folder it names (or that holds it), else the nearest
    existing parent, else the home folder."""
    path = field_text(value, one_per_line=False)
    if path:
        place = Path(os.path.expanduser(path)).absolute()
        for candidate in (place, *place.parents):
            if candidate.is_dir():
                return str(candidate)
    return str(Path.home())


def parent_folder(folder: str) -> str:
    """The folder above (the same at a drive's or the file system's root)."""
    return str(Path(os.path.expanduser(folder or str(Path.home()))).absolute().parent)


def pick_problem(path: str | None, folder_only: bool) -> str | None:
    """Why a path chosen in the picker cannot be taken (`folder_only`: a file cannot), None when it can."""
    if not path:
        return "Select a file or folder first (or use the folder shown)."
    if folder_only and not Path(path).is_dir():
        return f"`{Path(path).name}` is a file: choose a folder."
    return None
