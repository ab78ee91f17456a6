"""Caption file IO: read any common encoding, save atomically, keep every previous version.

Before a caption file is changed, its previous bytes (or a marker saying there was no file)
go to `studio_home()/backups/captions/<sha1 of the caption's absolute path>/`, never into the
user's dataset. Every backup can be restored byte-exactly, and a restore is itself backed up,
so it can be undone. Captions are always written as UTF-8 without a BOM.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from core.fsutil import atomic_write_bytes, atomic_write_json, studio_home

CONTENT_SUFFIX = ".bak"
ABSENT_SUFFIX = ".absent"
INDEX_NAME = "index.json"
PREVIEW_CHARS = 120

_BOMS = [  # (bom, codec, name) longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "utf-32", "UTF-32"), (b"\x00\x00\xfe\xff", "utf-32", "UTF-32"),
    (b"\xef\xbb\xbf", "utf-8-sig", "UTF-8"), (b"\xff\xfe", "utf-16", "UTF-16"),
    (b"\xfe\xff", "utf-16", "UTF-16"),
]


class CaptionText(NamedTuple):
    text: str
    encoding: str  # "utf-8", "utf-8-sig", "utf-16", "utf-32", "cp1252", "latin-1"; "" if no file
    note: str      # a line for the user when the file is absent or not plain UTF-8, else ""


@dataclass(frozen=True)
class Backup:
    id: str             # pass to restore_caption
    time: float         # when the backup was taken (seconds since the epoch)
    size: int | None    # bytes of the saved caption; None when there was no caption file
    preview: str        # start of the saved text ("" when absent)
    path: Path          # the backup file

    @property
    def absent(self) -> bool:
        return self.size is None


def decode_caption(data: bytes) -> CaptionText:
    """Text of caption bytes: BOM-marked UTF-8/16/32, plain UTF-8, else cp1252, else latin-1."""
    for bom, encoding, name in _BOMS:
        if data.startswith(bom):
            try:
                return CaptionText(data.decode(encoding).lstrip("\ufeff"), encoding,
                                   f"read as {name} with a BOM; saving writes UTF-8 without one")
            except UnicodeDecodeError:
                break
    try:
        return CaptionText(data.decode("utf-8"), "utf-8", "")
    except UnicodeDecodeError:
        pass
    try:
        text, encoding, name = data.decode("cp1252"), "cp1252", "Windows-1252"
    except UnicodeDecodeError:  # cp1252 leaves five bytes undefined; latin-1 maps every byte
        text, encoding, name = data.decode("latin-1"), "latin-1", "Latin-1"
    return CaptionText(text, encoding, f"not valid UTF-8; read as {name}; saving writes UTF-8")


def read_caption_detailed(path: str | os.PathLike) -> CaptionText:
    """The caption's text, the encoding used and a note; an absent file reads as ""."""
    data = _read_bytes(Path(path))
    if data is None:
        return CaptionText("", "", "no caption file yet")
    return decode_caption(data)


def read_caption(path: str | os.PathLike) -> str:
    return read_caption_detailed(path).text


def save_caption(path: str | os.PathLike, text: str) -> bool:
    """Write the caption atomically after backing up the current file; False if nothing changed.

    Text equal to what `read_caption` returns now (absent file: "") is not written.
    """
    path = Path(path)
    current = _read_bytes(path)
    unchanged = decode_caption(current).text if current is not None else ""
    if text == unchanged:
        return False
    _backup(path, current)
    atomic_write_bytes(path, text.encode("utf-8"))
    return True


def merge_caption(existing: str | None, parts: list[str], mode: str, separator: str) -> str | None:
    """The caption to write for generated `parts` (tags, or one sentence) given the current caption
    (None: no caption file), or None to leave the file alone.

    overwrite: the parts joined with `separator`; skip: only images without a caption file;
    append: the current text untouched, followed by the parts it does not contain yet (compared as
    stripped items split on the separator's non-space characters, e.g. the comma of ", ")."""
    new = separator.join(parts)
    if existing is None or mode == "overwrite":
        return new
    if mode == "skip":
        return None
    if mode != "append":
        raise ValueError(f"existing_captions must be skip, overwrite or append, not {mode!r}")
    split_on = separator.strip() or separator
    present = {item.strip() for item in existing.split(split_on)}
    extra = [p for p in parts if p.strip() and p.strip() not in present]
    if not extra:
        return None
    head = existing.rstrip()
    return (head + separator if head else "") + separator.join(extra)


def write_generated_caption(path: str | os.PathLike, parts: list[str], mode: str, separator: str) -> bool:
    """Write generated parts to the caption file `path` as `merge_caption` says (backed up,
    atomic); True when the file changed."""
    current = read_caption_detailed(path)
    merged = merge_caption(current.text if current.encoding else None, parts, mode, separator)
    return merged is not None and save_caption(path, merged)


def list_caption_backups(path: str | os.PathLike) -> list[Backup]:
    """The backups of one caption file, newest first."""
    entries = _backup_entries(_backup_folder(Path(path)))
    return [_describe(entry) for entry in sorted(entries, key=_stamp, reverse=True)]


def restore_caption(path: str | os.PathLike, backup_id: str) -> None:
    """Put a backup back byte-exactly (an absent marker deletes the caption); undoable.

    KeyError when the backup does not exist.
    """
    path = Path(path)
    backup = next((b for b in list_caption_backups(path) if b.id == str(backup_id)), None)
    if backup is None:
        raise KeyError(f"no backup {backup_id!r} for {path}")
    wanted = None if backup.absent else backup.path.read_bytes()
    current = _read_bytes(path)
    if wanted == current:
        return
    _backup(path, current)
    if wanted is None:
        path.unlink()
    else:
        atomic_write_bytes(path, wanted)


def backups_root() -> Path:
    """Where the studio keeps backups of anything it changes in a user's files."""
    return studio_home() / "backups"


def _backup_folder(path: Path) -> Path:
    key = os.path.normcase(os.path.abspath(path))
    return backups_root() / "captions" / hashlib.sha1(key.encode("utf-8")).hexdigest()


def _backup(path: Path, current: bytes | None) -> Path:
    """Keep `current` (None: there was no file) as a new backup of `path`."""
    folder = _backup_folder(path)
    index = folder / INDEX_NAME
    if not index.exists():
        atomic_write_json(index, {"path": os.path.abspath(path)})
    newest = max(map(_stamp, _backup_entries(folder)), default=0)
    stamp = max(time.time_ns(), newest + 1)  # coarse or stepped-back clocks keep the order
    target = folder / f"{stamp}{CONTENT_SUFFIX if current is not None else ABSENT_SUFFIX}"
    atomic_write_bytes(target, current if current is not None else b"")
    return target


def _backup_entries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [entry for entry in folder.iterdir()
            if entry.suffix in (CONTENT_SUFFIX, ABSENT_SUFFIX) and entry.stem.isdigit()]


def _stamp(entry: Path) -> int:
    return int(entry.stem)


def _describe(entry: Path) -> Backup:
    absent = entry.suffix == ABSENT_SUFFIX
    data = b"" if absent else entry.read_bytes()
    preview = "" if absent else decode_caption(data).text[:PREVIEW_CHARS]
    return Backup(id=entry.stem, time=_stamp(entry) / 1e9, size=None if absent else len(data),
                  preview=preview, path=entry)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
