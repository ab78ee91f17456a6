"""Caption cleaning (job `clean`) and its undo (job `undo_clean`).

Safety first: before anything changes, the current bytes of every caption the run will touch go
into a snapshot folder (`studio_home()/backups/cleaning/<id>/`), fsynced, and its manifest is
written last and atomically: a snapshot without a manifest never had a file changed. Then each
caption is replaced atomically, so a stopped or killed run leaves every file either old or new,
and the snapshot restores all of them byte for byte. Undoing takes a snapshot of its own first,
so an undo can be undone too.

What is at a caption path and is not a file (a folder, a FIFO, a broken link, ...) is reported once
and left alone, and so is a caption file that is a symbolic link: cleaning and undo write only
regular files, so the snapshot is always exactly what was there. Caption folders that are links out
of the dataset are not followed. A run first removes the temporary files a killed run left beside
the captions.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.captions.files import check_caption_path, read_caption_bytes, read_caption_detailed, remove_caption_temps
from core.captions.rules import clean_caption, parse_rules
from core.captions.stats import caption_files, find_with_tag
from core.config import CleanConfig, UndoCleanConfig
from core.fsutil import atomic_write_bytes, atomic_write_json, studio_home
from core.jobs.protocol import JobContext, JobStopped

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Change:
    path: Path      # the caption file
    before: str     # its text now
    after: str      # its text once cleaned
    note: str = ""  # how it was read when not plain UTF-8


@dataclass(frozen=True)
class Snapshot:
    id: str
    created: float
    files: int
    rules: list[str]
    label: str      # what made it: the rules, or "undo of <id>"


def snapshots_root() -> Path:
    return studio_home() / "backups" / "cleaning"


def planned_changes(cfg: CleanConfig, ctx: JobContext | None = None) -> tuple[list[Change], list[Path], list[Change]]:
    """(captions the rules change, caption files read, files read that are not plain UTF-8).

    Captions that are not written (see check_caption_path) are left out, reported to `ctx`."""
    rules = parse_rules(cfg.rules)
    report = _reporter(ctx)
    files = caption_files(cfg.train_data_dir, cfg.recursive, cfg.caption_extension, report, outside_links=False)
    changes, unusual = [], []
    if cfg.only_with_tag.strip():
        chosen = set(find_with_tag(cfg.train_data_dir, cfg.recursive, cfg.caption_extension, cfg.only_with_tag))
        files = [(image, path) for image, path in files if path in chosen]
    for i, (_, path) in enumerate(files):
        text = read_caption_detailed(path)
        change = Change(path, text.text, clean_caption(text.text, rules), text.note)
        problem = text.problem or check_caption_path(path, writing=True).problem
        if problem:
            report(path, problem)
        elif change.after != change.before:
            changes.append(change)
        if text.encoding not in ("utf-8", ""):
            unusual.append(change)
        if ctx is not None and i % 200 == 0:
            ctx.check_stop()
    return changes, [path for _, path in files], unusual


def preview(cfg: CleanConfig, limit: int = 20) -> tuple[list[Change], int, int, list[Change]]:
    """(first `limit` changes, number of files that would change, files read, non-UTF-8 files)."""
    changes, files, unusual = planned_changes(cfg)
    return changes[:limit], len(changes), len(files), unusual


def take_snapshot(paths: list[Path], label: str, rules: list[str]) -> Snapshot:
    """Copy the current bytes of `paths` into a new snapshot folder; the manifest goes last."""
    created = time.time()
    snapshot_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(created)) + "-" + uuid.uuid4().hex[:8]
    folder = snapshots_root() / snapshot_id
    (folder / "files").mkdir(parents=True, exist_ok=False)
    entries = []
    for i, path in enumerate(paths):
        data = read_caption_bytes(path)
        if data is None:
            raise FileNotFoundError(f"caption file gone before its snapshot: {path}")
        backup = folder / "files" / f"{i}.bak"
        with open(backup, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        entries.append({"path": str(path.resolve()), "backup": backup.name, "sha1": hashlib.sha1(data).hexdigest()})
    atomic_write_json(folder / MANIFEST, {"created": created, "label": label, "rules": rules, "files": entries})
    return Snapshot(snapshot_id, created, len(entries), rules, label)


def list_snapshots() -> list[Snapshot]:
    """Complete snapshots (with a manifest), newest first."""
    found = []
    root = snapshots_root()
    for folder in root.iterdir() if root.is_dir() else []:
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # interrupted before its manifest: nothing was changed with it
        found.append(Snapshot(folder.name, manifest["created"], len(manifest["files"]), manifest.get("rules", []),
                              manifest.get("label", "")))
    return sorted(found, key=lambda s: s.created, reverse=True)


def _manifest(snapshot_id: str) -> tuple[Path, dict]:
    folder = snapshots_root() / snapshot_id
    if "/" in snapshot_id or "\\" in snapshot_id or not (folder / MANIFEST).is_file():
        raise ValueError(f"no cleaning snapshot {snapshot_id!r} (see the list in the Cleaning tab)")
    return folder, json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def snapshot_folders(snapshot_id: str) -> list[str]:
    """The folders whose captions the snapshot restores ([] for an unknown one: undo reports it)."""
    try:
        _, manifest = _manifest(snapshot_id)
        return sorted({str(Path(entry["path"]).parent) for entry in manifest["files"]})
    except (OSError, ValueError, KeyError, TypeError):
        return []


def run(cfg: CleanConfig, ctx: JobContext) -> dict:
    started = time.time()
    changes, files, unusual = planned_changes(cfg, ctx)
    for change in unusual:
        ctx.warning(f"caption {change.note}", change.path)
    ctx.log(f"{len(files)} caption files, {len(changes)} would change")
    result = {"files": len(files), "changed": 0, "would_change": len(changes),
              "not_utf8": [str(c.path) for c in unusual]}
    if cfg.dry_run:
        return {**result, "seconds": round(time.time() - started, 2)}
    remove_caption_temps(files)
    if not changes:
        return {**result, "seconds": round(time.time() - started, 2)}
    snapshot = take_snapshot([c.path for c in changes], "rules: " + "; ".join(cfg.rules), list(cfg.rules))
    ctx.log(f"snapshot {snapshot.id}: {snapshot.files} captions saved (undo restores them)")
    result["snapshot"] = snapshot.id
    try:
        for i, change in enumerate(changes, start=1):
            problem = check_caption_path(change.path, writing=True).problem  # replaced since the plan?
            if problem:
                ctx.skipped(change.path, problem)
            else:
                atomic_write_bytes(change.path, change.after.encode("utf-8"))
                result["changed"] += 1
            ctx.progress(i, len(changes))
            ctx.check_stop()
    except JobStopped:
        ctx.log(f"stopped after {result['changed']} of {len(changes)} files; undo {snapshot.id} restores them")
        result["complete"] = False
    ctx.log(f"cleaned {result['changed']} caption files")
    return {**result, "seconds": round(time.time() - started, 2)}


def undo(snapshot_id: str, ctx: JobContext | None = None) -> dict:
    """Restore every file of the snapshot, after a snapshot of their current bytes (so the undo
    can be undone). Files deleted since are recreated; a path that now holds a link or anything
    but a file is reported and left alone (`left_alone`)."""
    folder, manifest = _manifest(snapshot_id)
    restore, existing, left_alone = [], [], []
    for entry in manifest["files"]:
        path = Path(entry["path"])
        present, problem = check_caption_path(path, writing=True)
        if problem:
            left_alone.append(str(path))
            _reporter(ctx)(path, problem)
            continue
        restore.append((path, folder / "files" / entry["backup"]))
        if present:
            existing.append(path)
    remove_caption_temps(path for path, _ in restore)
    before = take_snapshot(existing, f"undo of {snapshot_id}", []) if existing else None
    for i, (path, backup) in enumerate(restore, start=1):
        atomic_write_bytes(path, backup.read_bytes())
        if ctx is not None:
            ctx.progress(i, len(restore))
    if ctx is not None:
        ctx.log(f"restored {len(restore)} of {len(manifest['files'])} caption files from {snapshot_id}"
                + (f", {len(left_alone)} left alone (see the warnings)" if left_alone else "")
                + (f"; their previous state is snapshot {before.id}" if before else ""))
    return {"restored": len(restore), "left_alone": left_alone, "snapshot": snapshot_id,
            "undo_snapshot": before.id if before else None}


def _reporter(ctx: JobContext | None):
    """`report(path, reason)`: once per run to the job's warnings; nothing without a job."""
    return ctx.skipped if ctx is not None else (lambda path, reason: None)


def run_undo(cfg: UndoCleanConfig, ctx: JobContext) -> dict:
    return undo(cfg.snapshot.strip(), ctx)
