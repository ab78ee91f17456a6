"""Filesystem helpers: the one atomic-write implementation and the studio's folders."""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NAME_MAX = 255  # bytes in a file name on Linux, macOS and Windows (where os.pathconf cannot say)
NAME_HASH_CHARS = 10  # hex digits of the whole name's sha256 in a name shortened to fit (fitting_name)
TEMPFILE_RANDOM_CHARS = 8  # what tempfile.mkstemp and mkdtemp put between their prefix and suffix
# What to do when a write finds no room, by OS error; these errors are "the disk is full" (is_disk_full).
NO_ROOM_ADVICE = {errno.ENOSPC: "free some space, or choose another folder, and try again",
                  errno.EFBIG: "this drive takes no file this big, FAT32 stops at 4 GB: choose a folder on "
                               "another drive"}
if hasattr(errno, "EDQUOT"):
    NO_ROOM_ADVICE[errno.EDQUOT] = "your disk quota is used up: free some space, or choose another folder"
DISK_FULL = frozenset(NO_ROOM_ADVICE)
# torch's zip writer (torch.save, accelerate's optimizer state) reports a short write as a RuntimeError with
# one of these texts and no OS error: a full disk when the drive is nearly full right after it.
TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "basic_ios::clear: iostream error")
NEARLY_FULL_BYTES = 64 * 2**20
OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors) name an OS error


def studio_home() -> Path:
    """Folder for runs, user presets and backups (STUDIO_HOME, default: the repo root)."""
    return Path(os.environ.get("STUDIO_HOME") or REPO_ROOT)


def models_root() -> Path:
    """The studio's models/ folder: downloads go there and the model library always lists it."""
    return studio_home() / "models"


def runs_root() -> Path:
    return studio_home() / "runs"


_UMASK = os.umask(0)
os.umask(_UMASK)


def default_mode(folder: bool = False) -> int:
    """Permissions a new file (or folder) gets under the process umask."""
    return (0o777 if folder else 0o666) & ~_UMASK


def name_limit(folder: str | os.PathLike) -> int:
    """The longest file name, in bytes, that `folder` (or its nearest existing parent) takes."""
    for place in (Path(folder), *Path(folder).parents):
        try:
            limit = os.pathconf(place, "PC_NAME_MAX")
        except FileNotFoundError:
            continue
        except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no answer for this one
            break
        return min(limit, NAME_MAX) if limit > 0 else NAME_MAX
    return NAME_MAX


def fitting_name(path: str | os.PathLike, before: str = "", after: str = "", room: int = 0) -> Path:
    """`<before><name of path><after>` beside `path`: the one way to name what is written for `path` (its
    temporary file, staging folder, set-aside old version, cache file). Where that name, with `room` bytes
    more (what tempfile adds), would pass the folder's limit on a name (255 bytes), path's name is cut to
    a prefix and a hash of the whole: still recognisable, one per target, the same on every call."""
    path = Path(path)
    name = path.name
    room = name_limit(path.parent) - room - len(os.fsencode(before + after))
    if len(os.fsencode(name)) > room:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:NAME_HASH_CHARS]
        name = os.fsencode(name)[:max(room - NAME_HASH_CHARS - 1, 0)].decode("utf-8", "ignore") + "~" + digest
    return path.with_name(before + name + after)


def temp_file_prefix(path: str | os.PathLike) -> str:
    """How the names of atomic_path's temporary files for `path` begin (`.<name>.`, name cut to fit)."""
    return fitting_name(path, ".", ".", room=TEMPFILE_RANDOM_CHARS + len(".tmp")).name


def free_bytes(path: str | os.PathLike) -> int:
    """Free space on the drive that holds `path` (or its nearest existing parent)."""
    for place in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(place).free
        except OSError:  # not there (yet)
            continue
    return 0


def _os_error_number(exc: BaseException) -> int | None:
    """The OS error of an OSError, or the one a Rust library names in its text ("... (os error 28)")."""
    if isinstance(exc, OSError):
        return exc.errno
    match = OS_ERROR_IN_TEXT.search(str(exc))
    return int(match.group(1)) if match else None


def is_disk_full(exc: BaseException, path: str | os.PathLike) -> bool:
    """Whether `exc`, raised while writing `path`, means the drive had no room for it: an OS error ENOSPC,
    EFBIG or EDQUOT (safetensors' SafetensorError names it in its text), or torch's short-write
    RuntimeError while the drive is nearly full. Ask before removing the partial files: they hold the
    space that tells."""
    if _os_error_number(exc) in DISK_FULL:
        return True
    return (isinstance(exc, RuntimeError) and any(text in str(exc) for text in TORCH_WRITE_FAILED)
            and free_bytes(path) < NEARLY_FULL_BYTES)


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def disk_full_error(path: str | os.PathLike, exc: BaseException, needed: int | None = None) -> OSError:
    """The error of a write of `path` that found no room (is_disk_full), in one line: the file, the space
    it needs (`needed` bytes, where the writer knows) and the space free now (its partial files removed)."""
    number = _os_error_number(exc)
    number = number if number in DISK_FULL else errno.ENOSPC
    space = f"{format_bytes(free_bytes(path))} free on that drive"
    if needed:
        space = f"it needs about {format_bytes(needed)}, {space}"
    return OSError(number, f"cannot write {path}: {os.strerror(number)} ({space}); nothing was replaced "
                           f"({NO_ROOM_ADVICE[number]})")


@contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None):
    """Yield a temporary path beside `path` to write to; it replaces `path` only on success.

    Readers see the old or the new file, never a mix. The new file keeps the old one's
    permissions (or the usual ones for a new file), not the temp file's owner-only mode.
    A full drive is reported by disk_full_error (`needed`: the bytes the file takes, where known).
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=temp_file_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else default_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        full = is_disk_full(exc, path)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path, exc, needed) from exc
        raise


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Remove the temporary files a writer of `path` killed mid-write left beside it (atomic_path's
    `.<name>.*.tmp`); for big files written by one process at a time (models)."""
    path = Path(path)
    for stale in path.parent.glob(f"{glob.escape(temp_file_prefix(path))}*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def staging_folder(target: str | os.PathLike) -> Path:
    """A new empty folder beside `target` (`.<name>.tmp-XXXXXXXX`) to write a folder into before
    swap_in_folder puts it in place; the staging folders of writers killed earlier are removed first."""
    target = Path(target)
    prefix = fitting_name(target, ".", ".tmp-", room=TEMPFILE_RANDOM_CHARS).name
    for stale in target.parent.glob(f"{glob.escape(prefix)}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    staging.chmod(default_mode(folder=True))  # mkdtemp makes it owner-only
    return staging


def _set_aside(target: Path) -> Path:
    return fitting_name(target, ".", ".old")


def swap_in_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put a fully written `staging` folder at `target`, replacing what is there: the old folder is
    renamed aside first and deleted last, so a crash leaves a complete folder (see recover_folder)."""
    staging, target = Path(staging), Path(target)
    old = _set_aside(target)
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(target: str | os.PathLike) -> None:
    """After a crash inside swap_in_folder: put the old folder back if the new one never arrived."""
    target = Path(target)
    old = _set_aside(target)
    if old.exists():
        if target.exists():
            shutil.rmtree(old)
        else:
            old.rename(target)
