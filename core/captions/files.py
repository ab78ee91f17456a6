"""Caption file IO: read any common encoding, save atomically, keep every previous version.

Before a caption file is changed, its previous bytes (or a marker saying there was no file)
go to `studio_home()/backups/captions/<sha1 of the caption's absolute path>/`, never into the
user's dataset. Every backup can be restored byte-exactly, and a restore is itself backed up,
so it can be undone. Captions are always written as UTF-8 without a BOM.

Only a regular file is a caption file. Whatever else is at a caption path (a folder, a FIFO, a
socket, a device, a symbolic link loop or a link to nothing) is told apart by its status, never
opened, and reads as no caption with the reason from `check_caption_path`; nothing is written
over it. A caption file that is a symbolic link is read through the link but never written: a
write (and so an undo) would replace the link with a regular file.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from core.fsutil import atomic_write_bytes, atomic_write_json, remove_stale_temps, studio_home, temp_file_prefix

CONTENT_SUFFIX = ".bak"
ABSENT_SUFFIX = ".absent"
INDEX_NAME = "index.json"
PREVIEW_CHARS = 120
NO_CAPTION_FILE = "no caption file yet"
NOT_A_CAPTION_FILE = "caption path is {what}, not a caption file: read as no caption, never written"
LINKED_CAPTION = ("caption file is a symbolic link: read through it but never written (writing would replace "
                  "the link with a file); edit the file it points to, or replace the link with a copy")
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO that slips past the status check does not block the open
_KINDS = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")]

_BOMS = [  # (bom, codec, name) longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "utf-32", "UTF-32"), (b"\x00\x00\xfe\xff", "utf-32", "UTF-32"),
    (b"\xef\xbb\xbf", "utf-8-sig", "UTF-8"), (b"\xff\xfe", "utf-16", "UTF-16"),
    (b"\xfe\xff", "utf-16", "UTF-16"),
]


class CaptionText(NamedTuple):
    text: str
    encoding: str  # "utf-8", "utf-8-sig", "utf-16", "utf-32", "cp1252", "latin-1"; "" if no file was read
    note: str      # a line for the user when the file is absent, unusable or not plain UTF-8, else ""

    @property
    def problem(self) -> str:
        """Why what is at the caption path was not read (see check_caption_path); "" when it was
        read or nothing is there."""
        return self.note if not self.encoding and self.note != NO_CAPTION_FILE else ""


class CaptionFileError(OSError):
    """What is at a caption path is not read or not written; str() is the reason for the user."""


class CaptionCheck(NamedTuple):
    present: bool  # a caption file is there to read (through a symbolic link when not writing)
    problem: str   # why the path is left alone (the one text a job reports); "" when it is usable


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


def check_caption_path(path: str | os.PathLike, writing: bool = False) -> CaptionCheck:
    """Whether a caption file is at `path` and, when something unusable is, why: told from the
    status alone, nothing is opened. `writing`: a symbolic link is unusable too."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            return CaptionCheck(False, NOT_A_CAPTION_FILE.format(what="a symbolic link to nothing"))
        return CaptionCheck(False, "")
    except OSError as exc:
        what = "a symbolic link loop" if exc.errno == errno.ELOOP else f"unreadable ({exc.strerror or exc})"
        return CaptionCheck(False, NOT_A_CAPTION_FILE.format(what=what))
    if not stat.S_ISREG(info.st_mode):
        return CaptionCheck(False, NOT_A_CAPTION_FILE.format(what=_kind(info.st_mode)))
    if writing and os.path.islink(path):
        return CaptionCheck(False, LINKED_CAPTION)
    return CaptionCheck(True, "")


def read_caption_bytes(path: str | os.PathLike) -> bytes | None:
    """The bytes of the caption file at `path`, None when there is none; CaptionFileError when
    something else is there or it cannot be read."""
    present, problem = check_caption_path(path)
    if problem:
        raise CaptionFileError(problem)
    if not present:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CaptionFileError(NOT_A_CAPTION_FILE.format(what=f"unreadable ({exc.strerror or exc})")) from exc
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):  # replaced since the check
            raise CaptionFileError(NOT_A_CAPTION_FILE.format(what=_kind(mode)))
        try:
            return f.read()
        except OSError as exc:
            raise CaptionFileError(NOT_A_CAPTION_FILE.format(what=f"unreadable ({exc.strerror or exc})")) from exc


def read_caption_detailed(path: str | os.PathLike) -> CaptionText:
    """The caption's text, the encoding used and a note; an absent file reads as "", and so does
    anything else at the path, with the reason as the note (CaptionText.problem)."""
    try:
        data = read_caption_bytes(path)
    except CaptionFileError as exc:
        return CaptionText("", "", str(exc))
    if data is None:
        return CaptionText("", "", NO_CAPTION_FILE)
    return decode_caption(data)


def read_caption(path: str | os.PathLike) -> str:
    return read_caption_detailed(path).text


def save_caption(path: str | os.PathLike, text: str) -> bool:
    """Write the caption atomically after backing up the current file; False if nothing changed.

    Text equal to what `read_caption` returns now (absent file: "") is not written. CaptionFileError
    when the path holds something that is not written (see check_caption_path).
    """
    path = Path(path)
    current = _writable_bytes(path)
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
    atomic); True when the file changed. CaptionFileError when the path is not written."""
    current = read_caption_detailed(path)
    if current.problem:
        raise CaptionFileError(current.problem)
    merged = merge_caption(current.text if current.encoding else None, parts, mode, separator)
    return merged is not None and save_caption(path, merged)


def list_caption_backups(path: str | os.PathLike) -> list[Backup]:
    """The backups of one caption file, newest first."""
    entries = _backup_entries(_backup_folder(Path(path)))
    return [_describe(entry) for entry in sorted(entries, key=_stamp, reverse=True)]


def restore_caption(path: str | os.PathLike, backup_id: str) -> None:
    """Put a backup back byte-exactly (an absent marker deletes the caption); undoable.

    KeyError when the backup does not exist, CaptionFileError when the path is not written.
    """
    path = Path(path)
    backup = next((b for b in list_caption_backups(path) if b.id == str(backup_id)), None)
    if backup is None:
        raise KeyError(f"no backup {backup_id!r} for {path}")
    wanted = None if backup.absent else backup.path.read_bytes()
    current = _writable_bytes(path)
    if wanted == current:
        return
    _backup(path, current)
    if wanted is None:
        path.unlink()
    else:
        atomic_write_bytes(path, wanted)


def remove_caption_temps(paths: Iterable[str | os.PathLike]) -> None:
    """Remove the temporary files that writes of these caption files, killed midway, left beside
    them (see core.fsutil.atomic_path). Each folder is listed once."""
    by_folder: dict[Path, list[Path]] = {}
    for path in map(Path, paths):
        by_folder.setdefault(path.parent, []).append(path)
    for folder, captions in by_folder.items():
        try:
            temps = [entry.name for entry in os.scandir(folder) if entry.name.startswith(".")
                     and entry.name.endswith(".tmp")]
        except OSError:
            continue
        for path in captions if temps else []:
            if any(name.startswith(temp_file_prefix(path)) for name in temps):
                remove_stale_temps(path)


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


def _writable_bytes(path: Path) -> bytes | None:
    """The current bytes of a caption about to be written (None: no file); CaptionFileError when
    the path is not written."""
    problem = check_caption_path(path, writing=True).problem
    if problem:
        raise CaptionFileError(problem)
    return read_caption_bytes(path)


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "a special file")
