"""What the captioning jobs share: which images to do, decoding ahead, batches, writing, counting,
stopping and the result. A job supplies `decode(path)` (runs on worker threads) and
`caption(batch)` (the model: decoded inputs -> one caption per image) and `write(path, caption)`.

Folders linked from outside the dataset are not followed (reported once). A caption path that holds
something the writer refuses (a folder, a FIFO, a symbolic link, ...; core.captions.files) makes
that image fail with the reason, reported once."""
from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable

from core.captions.files import check_caption_path, read_caption, remove_caption_temps, write_generated_caption
from core.config import CaptionWriteSettings
from core.dataset.discovery import caption_path, find_images
from core.dataset.images import ImageError
from core.dataset.prefetch import prefetch
from core.jobs.protocol import JobContext, JobStopped, failure_message

APPEND_SEPARATOR = ", "  # between a caption file's text and a sentence appended to it


def save_sentence(path: Path, text: str, mode: str) -> bool:
    """Write a generated sentence as `existing_captions` says (skip / overwrite / append: after the current text
    with ", ", unless the text holds it already); backed up and atomic. True if the file changed."""
    if mode == "append" and text.casefold() in read_caption(path).casefold():
        return False
    return write_generated_caption(path, [text], mode, APPEND_SEPARATOR)


def images_to_do(cfg: CaptionWriteSettings,
                 on_error: Callable[[Path, str], None] | None = None) -> tuple[list[Path], int]:
    """(images the run captions, how many are skipped up front because they have a caption file:
    with existing_captions=skip they are not even decoded, so a stopped run continues). Only the
    images inside the dataset folders (see find_images' `outside_links`)."""
    images = [image.path for image in find_images(cfg.train_data_dir, cfg.recursive, on_error, outside_links=False)]
    if cfg.existing_captions != "skip":
        return images, 0
    todo = [path for path in images if not check_caption_path(caption_path(path, cfg.caption_extension)).present]
    return todo, len(images) - len(todo)


@dataclass
class Tally:
    """What happened to each image, with the progress report."""
    total: int
    skipped: int
    written: int = 0
    unchanged: int = 0
    failed_paths: list[str] = field(default_factory=list)

    def fail(self, ctx: JobContext, reason: str, path: Path) -> None:
        self.failed_paths.append(str(path))
        ctx.skipped(path, reason)

    def report(self, ctx: JobContext) -> None:
        ctx.progress(self.skipped + self.written + self.unchanged + len(self.failed_paths), self.total)

    def result(self, complete: bool, seconds: float) -> dict:
        return {"complete": complete, "images": self.total, "written": self.written, "skipped": self.skipped,
                "unchanged": self.unchanged, "failed": len(self.failed_paths), "failed_paths": self.failed_paths,
                "seconds": round(seconds, 3)}


def reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, ImageError) else failure_message(exc)


def caption_images(cfg: CaptionWriteSettings, ctx: JobContext, what: str, batch_size: int,
                   decode: Callable[[Path], object], caption: Callable[[list], list],
                   write: Callable[[Path, object], bool]) -> dict:
    """The whole job after the model is loaded: the result dict (see Tally.result)."""
    started = time.perf_counter()
    todo, skipped = images_to_do(cfg, ctx.skipped)
    remove_caption_temps(caption_path(path, cfg.caption_extension) for path in todo)
    tally = Tally(total=len(todo) + skipped, skipped=skipped)
    ctx.log(f"{tally.total} images: {len(todo)} to {what}, {skipped} with a caption file already (skipped)")
    tally.report(ctx)
    complete = True
    try:
        _batches(cfg, ctx, todo, batch_size, decode, caption, write, tally)
    except JobStopped:
        complete = False
        ctx.log("stopped: every caption written is complete; run again with existing_captions=skip to continue")
    seconds = time.perf_counter() - started
    ctx.log(f"{what} {'complete' if complete else 'PARTIAL (stopped)'}: {tally.written} written, "
            f"{tally.unchanged} unchanged, {tally.skipped} skipped, {len(tally.failed_paths)} failed, {seconds:.1f} s")
    return tally.result(complete, seconds)


def _batches(cfg, ctx, todo, batch_size, decode, caption, write, tally: Tally) -> None:
    """Decode ahead on worker threads, run the model batch by batch, write; stops between batches."""
    ahead = 2 * batch_size + cfg.max_data_loader_n_workers
    decoded = prefetch(decode, todo, cfg.max_data_loader_n_workers, ahead)
    with closing(decoded):
        for _ in range(0, len(todo), batch_size):
            ctx.check_stop()
            ready = []
            for path, result in islice(decoded, batch_size):
                if isinstance(result, Exception):
                    tally.fail(ctx, reason(result), path)
                    tally.report(ctx)
                else:
                    ready.append((path, result))
            if ready:
                for (path, _), text in zip(ready, caption([inputs for _, inputs in ready])):
                    _write(cfg, ctx, path, text, write, tally)
                    tally.report(ctx)


def _write(cfg, ctx, path: Path, text, write, tally: Tally) -> None:
    target = caption_path(path, cfg.caption_extension)
    try:
        changed = write(target, text)
    except OSError as exc:
        tally.fail(ctx, f"cannot write the caption file {target}: {exc.strerror or exc}", path)
        return
    if changed:
        tally.written += 1
    else:
        tally.unchanged += 1


def first_decodable(todo: list[Path], decode: Callable[[Path], object], limit: int) -> list[tuple[Path, object]]:
    """(path, decoded input) of the first `limit` images that decode (for previews)."""
    chosen = []
    for path in todo:
        if len(chosen) == limit:
            break
        try:
            chosen.append((path, decode(path)))
        except ImageError:
            continue
    return chosen
