"""Filesystem helpers: the one atomic-write implementation and the studio's folders."""
from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}  # fixed by making room


def studio_home() -> Path:
    """Folder for runs, user presets and backups (STUDIO_HOME, default: the repo root)."""
    return Path(os.environ.get("STUDIO_HOME") or REPO_ROOT)


def runs_root() -> Path:
    return studio_home() / "runs"


_UMASK = os.umask(0)
os.umask(_UMASK)


def default_mode(folder: bool = False) -> int:
    """Permissions a new file (or folder) gets under the process umask."""
    return (0o777 if folder else 0o666) & ~_UMASK


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path` to write to; it replaces `path` only on success.

    Readers see the old or the new file, never a mix. The new file keeps the old one's
    permissions (or the usual ones for a new file), not the temp file's owner-only mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else default_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in DISK_FULL:
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; nothing was replaced "
                                     "(free some space, or choose another folder, and try again)") from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Remove the temporary files a writer of `path` killed mid-write left beside it (atomic_path's
    `.<name>.*.tmp`); for big files written by one process at a time (models)."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def swap_in_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put a fully written `staging` folder at `target`, replacing what is there: the old folder is
    renamed aside first and deleted last, so a crash leaves a complete folder (see recover_folder)."""
    staging, target = Path(staging), Path(target)
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(target: str | os.PathLike) -> None:
    """After a crash inside swap_in_folder: put the old folder back if the new one never arrived."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        if target.exists():
            shutil.rmtree(old)
        else:
            old.rename(target)
