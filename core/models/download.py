"""The `download` job: files of a Hugging Face Hub repository (or a catalogue model) into a folder.

It is the only job that goes online, and it promises what a person on a home connection needs:
- Before fetching a byte it lists the repository at one commit (model info with file metadata: sizes, the
  sha256 of LFS files, the git blob id of the others) and refuses, in one line, when no file matches the
  patterns, when a different file already has a destination name (nothing of the user's is overwritten: they
  move it away or choose another folder), or when the drive has no room for what is still to fetch. Files
  already there and matching the Hub are skipped.
- Each file is fetched into `.<name>.<hash>.incomplete` beside its destination with huggingface_hub's
  `http_get`, which resumes with a Range request after a dropped connection (5 tries). A Stop, a kill or a
  lost connection leaves that partial file, and the next run of the same download continues from its bytes.
  (huggingface_hub 2.4.0's `hf_hub_download` cannot: it writes a process-unique temporary file that it
  deletes on failure, checks sizes but no sha256, and replaces an outdated file at the destination.)
- A finished file is checked against the Hub's sha256 (LFS files) or git blob id (the others) and only then
  renamed into place; on a mismatch the partial file is removed and the job fails naming the file.
- Offline stays the default: every process of the studio runs with HF_HUB_OFFLINE=1 (launch scripts,
  `python -m core`), which huggingface_hub reads into `constants.HF_HUB_OFFLINE` at import and checks before
  every request. `hub_online` lifts it in this process only, while the job talks to the Hub; the environment
  keeps HF_HUB_OFFLINE=1, so nothing this job starts goes online.
- The token of a gated or private repository is never a parameter: huggingface_hub reads HF_TOKEN or the
  `hf auth login` token when it builds a request, so it reaches no config, preset, log, event or run folder.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.fsutil import fitting_name, format_bytes, free_bytes, is_disk_full

READ_CHUNK = 2**20  # bytes huggingface_hub reads between two stop checks (its default, 10 MiB, is slow to stop)
HASH_BLOCK = 8 * 2**20
PROGRESS_EVERY_S = 0.5
PARTIAL_SUFFIX = ".incomplete"
GATED = "{repo} is gated: accept its licence on huggingface.co and log in with `hf auth login` or set HF_TOKEN"


class DownloadError(Exception):
    """A download that cannot go on, in one line: what happened, what was kept, what to do."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of the repository as the Hub lists it."""
    path: str  # in the repository, with /
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # the git object id: sha1 of "blob <size>\0" + the bytes

    @property
    def digest(self) -> str:
        return self.sha256 or self.blob_id or ""

    @property
    def hash_name(self) -> str:
        return "sha256" if self.sha256 else "git blob id"

    def hasher(self):
        """A hash that gives `digest` once fed the file's bytes (if they are the Hub's)."""
        if self.sha256:
            return hashlib.sha256()
        git = hashlib.sha1()
        git.update(b"blob %d\0" % self.size)
        return git


@dataclass(frozen=True)
class Planned:
    """A file to fetch: where it goes, its partial file and the bytes already in it."""
    remote: RemoteFile
    dest: Path
    partial: Path
    have: int


# --- talking to the Hub ---

@contextmanager
def hub_online():
    """Let huggingface_hub make requests in this process (HF_HUB_OFFLINE=1 stays in the environment), and read
    downloads in 1 MiB chunks so a stop is seen within a chunk."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, constants.DOWNLOAD_CHUNK_SIZE
    constants.HF_HUB_OFFLINE, constants.DOWNLOAD_CHUNK_SIZE = False, READ_CHUNK
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, constants.DOWNLOAD_CHUNK_SIZE = saved


class _JobLogHandler(logging.Handler):
    def __init__(self, ctx):
        super().__init__(logging.WARNING)
        self.ctx = ctx

    def emit(self, record: logging.LogRecord) -> None:
        self.ctx.log("huggingface_hub: " + " ".join(record.getMessage().split()))


@contextmanager
def hub_warnings_to(ctx):
    """huggingface_hub's warnings (e.g. "Trying to resume download...") go to the job's log, not to stderr."""
    logger = logging.getLogger("huggingface_hub")
    saved = logger.handlers[:]
    logger.handlers = [_JobLogHandler(ctx)]
    try:
        yield
    finally:
        logger.handlers = saved


@contextmanager
def hub_errors(repo_id: str, revision: str, kept: str = ""):
    """huggingface_hub's errors as one DownloadError line; `kept`: what a lost connection leaves behind."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise DownloadError(GATED.format(repo=repo_id)) from None
    except RevisionNotFoundError:
        raise DownloadError(f"{repo_id} has no revision {revision!r} on {constants.ENDPOINT}") from None
    except RemoteEntryNotFoundError as exc:
        raise DownloadError(f"{repo_id} at {revision}: a listed file is missing on the Hub ({_first_line(exc)})") \
            from None
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo_id}: no such repository on {constants.ENDPOINT} (a private one needs "
                            "`hf auth login` or HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise DownloadError(f"{repo_id}: the Hub answered {_first_line(exc)}{kept}") from None
    except httpx2.TransportError as exc:
        raise DownloadError(f"cannot reach {constants.ENDPOINT} ({_first_line(exc) or type(exc).__name__}): "
                            f"check the internet connection{kept or '; nothing was downloaded'}") from None


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def list_repo_files(repo_id: str, revision: str) -> tuple[str, bool, list[RemoteFile]]:
    """The commit `revision` names, whether the repository is gated, and its files with sizes and hashes."""
    from huggingface_hub import HfApi

    with hub_errors(repo_id, revision):
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    files = [RemoteFile(s.rfilename, s.lfs.size if s.lfs else s.size or 0, s.lfs.sha256 if s.lfs else None,
                        s.blob_id) for s in info.siblings or []]
    return info.sha, bool(info.gated), files


def select(files: list[RemoteFile], patterns: list[str], repo_id: str, ctx) -> list[RemoteFile]:
    """The files matching any pattern (huggingface_hub's fnmatch rules); a pattern matching nothing is a warning,
    no file at all a refusal."""
    from huggingface_hub.utils import filter_repo_objects

    def matching(allow: list[str]) -> list[RemoteFile]:
        return list(filter_repo_objects(files, allow_patterns=allow, key=lambda f: f.path))

    for pattern in patterns:
        if not matching([pattern]):
            ctx.warning(f"no file of {repo_id} matches {pattern!r}")
    if not (chosen := matching(patterns)):
        names = ", ".join(f.path for f in files[:12]) + (", ..." if len(files) > 12 else "")
        raise DownloadError(f"refused: no file of {repo_id} matches {' '.join(patterns)} (it has: {names or 'none'})")
    if unverifiable := [f.path for f in chosen if not f.digest]:
        raise DownloadError(f"refused: the Hub gave no hash for {', '.join(unverifiable)}, so it cannot be checked")
    return chosen


# --- files on this machine ---

def destination(folder: Path, remote_path: str) -> Path:
    """Where a repository file goes in `folder` (its subfolders kept); a name that would leave it is refused."""
    parts = PurePosixPath(remote_path).parts
    if not parts or remote_path.startswith("/") or "\\" in remote_path or {"..", "."} & set(parts):
        raise DownloadError(f"refused: the Hub lists a file name that would leave the download folder: "
                            f"{remote_path!r}")
    return folder.joinpath(*parts)


def partial_path(dest: Path, digest: str) -> Path:
    """The partial file of `dest` for the Hub's version `digest` (hidden, one per version)."""
    return fitting_name(dest, ".", f".{digest[:12]}{PARTIAL_SUFFIX}")


def stale_partials(dest: Path, digest: str) -> list[Path]:
    """Partial files of `dest` left by the download of another version of it."""
    mine = partial_path(dest, digest)
    stem = mine.name[:-len(digest[:12] + PARTIAL_SUFFIX)]
    return [p for p in dest.parent.glob(glob.escape(stem) + "?" * 12 + PARTIAL_SUFFIX) if p != mine]


def file_digest(path: Path, remote: RemoteFile, ctx) -> str:
    """The hash of a local file, computed as the Hub computes `remote`'s (a stop is honoured between blocks)."""
    digest = remote.hasher()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
            ctx.check_stop()
    return digest.hexdigest()


def plan(files: list[RemoteFile], folder: Path, repo_id: str, ctx) -> tuple[list[Planned], list[RemoteFile]]:
    """The files to fetch and those already in place; refuses when a different file has a destination name."""
    todo, present, different = [], [], []
    for remote in files:
        dest = destination(folder, remote.path)
        if dest.exists() or dest.is_symlink():
            if dest.is_file() and dest.stat().st_size == remote.size and \
                    file_digest(dest, remote, ctx) == remote.digest:
                ctx.log(f"{remote.path}: already there (its {remote.hash_name} matches the Hub's)")
                present.append(remote)
            else:
                different.append(remote.path)
            continue
        partial = partial_path(dest, remote.digest)
        have = partial.stat().st_size if partial.is_file() else 0
        todo.append(Planned(remote, dest, partial, have if have <= remote.size else 0))
    if different:
        raise DownloadError(f"refused: {', '.join(different)} already in {folder} differ from {repo_id}'s and are "
                            "never overwritten: move them away or choose another download folder (nothing was "
                            "downloaded)")
    return todo, present


def check_room(todo: list[Planned], folder: Path) -> None:
    needed, free = sum(p.remote.size - p.have for p in todo), free_bytes(folder)
    if needed > free:
        raise DownloadError(f"refused: {format_bytes(needed)} to download into {folder} but {format_bytes(free)} "
                            "free on that drive: free some space or choose another download folder (nothing was "
                            "downloaded)")


# --- the download ---

class ByteProgress:
    """The job's progress in bytes over all files to fetch: progress events (at most every PROGRESS_EVERY_S)
    with unit "bytes", and a stop check on every chunk. It is also the progress bar huggingface_hub's
    http_get is given (`tqdm_class`): it calls `update(len(chunk))` as it writes."""

    def __init__(self, ctx, total: int, done: int):
        self.ctx, self.total, self.done, self.shown = ctx, total, done, 0.0

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def update(self, count: int) -> None:
        self.done += count
        self.emit()
        self.ctx.check_stop("stopped: the bytes fetched so far are kept; run the same download again to continue")

    def emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.shown >= PROGRESS_EVERY_S:
            self.shown = now
            self.ctx.progress(min(self.done, self.total), self.total, unit="bytes")


def fetch(item: Planned, repo_id: str, commit: str, progress: ByteProgress, ctx) -> None:
    """Fetch one file into its partial file (continuing from what is there), check its hash, put it in place."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    remote, part = item.remote, item.partial
    for stale in stale_partials(item.dest, remote.digest):
        stale.unlink(missing_ok=True)
    if item.have:
        ctx.log(f"{remote.path}: continuing at {format_bytes(item.have)} of {format_bytes(remote.size)}")
    else:
        part.unlink(missing_ok=True)  # one longer than the file: not a prefix of it
        ctx.log(f"{remote.path}: {format_bytes(remote.size)}")
    part.parent.mkdir(parents=True, exist_ok=True)
    kept = "; the bytes fetched so far are kept: run the same download again to continue"
    try:
        with open(part, "ab") as out, hub_errors(repo_id, commit, kept):
            http_get(hf_hub_url(repo_id, remote.path, revision=commit), out, resume_size=item.have,
                     headers=build_hf_headers(), expected_size=remote.size, displayed_filename=remote.path,
                     tqdm_class=lambda **bar: progress)
    except OSError as exc:
        if is_disk_full(exc, part):
            free = format_bytes(free_bytes(part))
            raise DownloadError(f"{remote.path}: the drive of {item.dest.parent} is full ({free} "
                                f"free): free some space and run the same download again, it continues from the "
                                f"{format_bytes(part.stat().st_size)} fetched") from None
        raise
    progress.emit(force=True)
    got = file_digest(part, remote, ctx)
    if got != remote.digest:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{remote.path}: the downloaded bytes do not match the Hub's {remote.hash_name} "
                            f"({got[:12]}... instead of {remote.digest[:12]}...): the file was removed and nothing "
                            "was put in place; run the download again")
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    if item.dest.exists() or item.dest.is_symlink():
        raise DownloadError(f"refused: {item.dest} appeared during the download and is not overwritten; the "
                            f"checked download is kept as {part.name}")
    os.replace(part, item.dest)
    ctx.log(f"{remote.path}: done, {remote.hash_name} checked")


def run(cfg, ctx) -> dict:
    from huggingface_hub import get_token

    repo_id, patterns = cfg.source()
    folder = cfg.folder()
    if cfg.catalogue and (cfg.repo_id or cfg.files) and (cfg.repo_id, cfg.files) != (repo_id, patterns):
        ctx.warning(f"catalogue model {cfg.catalogue} chosen: repo_id and files are ignored")
    if folder.exists() and not folder.is_dir():
        raise DownloadError(f"refused: {folder} is a file, not a folder")
    with hub_online(), hub_warnings_to(ctx):
        commit, gated, listed = list_repo_files(repo_id, cfg.revision)
        files = select(listed, patterns, repo_id, ctx)
        if gated and not get_token():
            raise DownloadError(GATED.format(repo=repo_id))
        ctx.log(f"{repo_id} at {commit[:10]}: {len(files)} file(s), {format_bytes(sum(f.size for f in files))}, "
                f"into {folder}")
        todo, present = plan(files, folder, repo_id, ctx)
        check_room(todo, folder)
        progress = ByteProgress(ctx, total=sum(p.remote.size for p in todo), done=sum(p.have for p in todo))
        if todo:
            progress.emit(force=True)
        for item in todo:
            ctx.check_stop()
            fetch(item, repo_id, commit, progress, ctx)
    ctx.log(f"{len(todo)} file(s) downloaded, {len(present)} already there, in {folder}")
    return {"repo_id": repo_id, "revision": commit, "folder": str(folder),
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "blob_id": f.blob_id} for f in files],
            "downloaded": [p.remote.path for p in todo], "present": [f.path for f in present]}
