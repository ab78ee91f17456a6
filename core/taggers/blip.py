"""BLIP captions (job `caption`): one sentence per image from a local transformers BLIP model.

Generation follows kohya sd-scripts' make_captions.py: beam search (deterministic) or nucleus
sampling (with BLIP's repetition penalty of 1.1), a shortest and a longest caption, prefix and
postfix. Both lengths count the caption's tokens: they are passed to transformers as
`min_new_tokens` / `max_new_tokens` (its `min_length` / `max_length` would also count the [DEC]
token BLIP starts from). Nucleus sampling draws every image's words from a generator seeded by
`seed` and the image's path, so a caption does not depend on the batch it ran in, and the
preview shows what the run writes.

existing_captions: `skip` leaves images that have a caption file alone (they are not even
decoded, so a stopped run continues where it stopped); `overwrite` replaces the file; `append`
adds the sentence after the current text with ", " (captions are mostly comma-separated tags)
unless the text contains it already. Changed files are backed up by core.captions.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from core.captions import read_caption, write_generated_caption
from core.config import BlipCaptionConfig
from core.dataset import caption_path, find_images
from core.images import ImageError, open_image
from core.jobs import JobContext, JobStopped
from core.prefetch import prefetch

APPEND_SEPARATOR = ", "
SAMPLING_REPETITION_PENALTY = 1.1  # what BLIP's own generate uses when sampling
MODEL_HINT = ("it must hold a transformers BlipForConditionalGeneration (config.json, model.safetensors) and "
              "its processor (preprocessor_config.json and the tokenizer files), e.g. "
              "Salesforce/blip-image-captioning-large downloaded with all its files")


class Blip(NamedTuple):
    model: object      # BlipForConditionalGeneration, in eval mode on `device`
    processor: object  # BlipProcessor
    device: torch.device
    dtype: torch.dtype


def load_blip(model_dir: str) -> Blip:
    """The BLIP model of a local folder: on CUDA in fp16 when available, else on the CPU in fp32.
    The last model loaded is kept, so repeated previews are fast. ValueError for a wrong folder."""
    return _load_blip(os.path.abspath(os.path.expanduser(model_dir.strip())))


@functools.lru_cache(maxsize=1)
def _load_blip(folder: str) -> Blip:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    _check_model_dir(Path(folder))
    device, dtype = (torch.device("cuda"), torch.float16) if torch.cuda.is_available() else (
        torch.device("cpu"), torch.float32)
    try:
        model = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True, dtype=dtype)
        processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the BLIP model in {folder} ({exc}); {MODEL_HINT}") from exc
    return Blip(model.to(device).eval(), processor, device, dtype)


def _check_model_dir(folder: Path) -> None:
    """ValueError unless the folder has a transformers config of a BLIP captioning model."""
    if not folder.is_dir():
        raise ValueError(f"BLIP model folder not found: {folder}; {MODEL_HINT}")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError(f"no readable config.json in the BLIP model folder {folder}; {MODEL_HINT}") from None
    architectures = config.get("architectures") or ["BlipForConditionalGeneration"]
    if config.get("model_type") != "blip" or "BlipForConditionalGeneration" not in architectures:
        found = ", ".join(architectures) if config.get("architectures") else config.get("model_type")
        raise ValueError(f"{folder} holds a {found} model, not a BLIP captioning model; {MODEL_HINT}")


def image_seed(seed: int, image_path: str | os.PathLike) -> int:
    """The sampling seed of one image: the same for the same seed and file, in any batch."""
    key = f"{seed}|{os.path.normcase(os.path.abspath(image_path))}"
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") >> 1


class NucleusSampler:
    """A logits processor that samples each row's next token (top-p) from that row's own generator
    and leaves only that token possible, so greedy decoding picks it. transformers' do_sample
    draws from the global RNG instead, which ties every caption to its batch."""

    def __init__(self, top_p: float, seeds: list[int]):
        self.top_p = top_p
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        probs, order = scores.float().softmax(-1).cpu().sort(-1, descending=True)
        outside = probs.cumsum(-1) - probs >= self.top_p  # the top token always stays
        probs[outside] = 0
        picked = [row_order[torch.multinomial(row, 1, generator=g)]
                  for row, row_order, g in zip(probs, order, self.generators)]
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(picked)), torch.cat(picked).to(scores.device)] = 0
        return chosen


def generate_captions(blip: Blip, cfg: BlipCaptionConfig, paths: list[Path],
                      pixels: torch.Tensor) -> list[str]:
    """The caption to write for each image (prefix and postfix applied)."""
    options = dict(min_new_tokens=cfg.min_length, max_new_tokens=cfg.max_length, do_sample=False)
    if cfg.beam_search:
        options["num_beams"] = cfg.num_beams
    else:
        sampler = NucleusSampler(cfg.top_p, [image_seed(cfg.seed, path) for path in paths])
        options.update(num_beams=1, logits_processor=[sampler],
                       repetition_penalty=SAMPLING_REPETITION_PENALTY)
    with torch.inference_mode():
        ids = blip.model.generate(pixel_values=pixels.to(blip.device, blip.dtype), **options)
    texts = blip.processor.batch_decode(ids, skip_special_tokens=True)
    return [" ".join(f"{cfg.prefix} {text} {cfg.postfix}".split()) for text in texts]


def pixels_of(blip: Blip, path: Path, max_pixels: int) -> torch.Tensor:
    """One image as the model's [3, H, W] input (runs on the decoding threads)."""
    image = open_image(path, max_pixels)
    return blip.processor.image_processor(image, return_tensors="pt")["pixel_values"][0]


def images_to_caption(cfg: BlipCaptionConfig,
                      on_error: Callable[[Path, str], None] | None = None) -> tuple[list[Path], int]:
    """(images the run captions, how many are skipped because they have a caption file)."""
    images = [image.path for image in find_images(cfg.train_data_dir, cfg.recursive, on_error)]
    if cfg.existing_captions != "skip":
        return images, 0
    todo = [path for path in images if not caption_path(path, cfg.caption_extension).exists()]
    return todo, len(images) - len(todo)


def save_caption_text(path: Path, text: str, mode: str) -> bool:
    """Write one caption as `existing_captions` says (see the module docstring); True if changed."""
    if mode == "append" and text.casefold() in read_caption(path).casefold():
        return False
    return write_generated_caption(path, [text], mode, APPEND_SEPARATOR)


@dataclass
class Tally:
    """What happened to each image, with the progress report."""
    total: int
    skipped: int
    written: int = 0
    unchanged: int = 0
    failed_paths: list[str] = field(default_factory=list)

    def fail(self, ctx: JobContext, message: str, path: Path) -> None:
        self.failed_paths.append(str(path))
        ctx.warning(message, path)

    def report(self, ctx: JobContext) -> None:
        ctx.progress(self.skipped + self.written + self.unchanged + len(self.failed_paths), self.total)


def caption_all(cfg: BlipCaptionConfig, ctx: JobContext, blip: Blip, todo: list[Path], tally: Tally) -> None:
    """Decode ahead on worker threads, caption batch by batch, write; stops between batches."""
    ahead = 2 * cfg.batch_size + cfg.max_data_loader_n_workers
    decoded = prefetch(lambda path: pixels_of(blip, path, cfg.max_image_pixels), todo,
                       cfg.max_data_loader_n_workers, ahead)
    with closing(decoded):
        for _ in range(0, len(todo), cfg.batch_size):
            ctx.check_stop()
            ready = []
            for path, result in islice(decoded, cfg.batch_size):
                if isinstance(result, Exception):
                    tally.fail(ctx, f"skipped: {_reason(result)}", path)
                else:
                    ready.append((path, result))
            if ready:
                paths = [path for path, _ in ready]
                captions = generate_captions(blip, cfg, paths, torch.stack([px for _, px in ready]))
                for path, caption in zip(paths, captions):
                    write_one(cfg, ctx, path, caption, tally)
            tally.report(ctx)


def write_one(cfg: BlipCaptionConfig, ctx: JobContext, path: Path, caption: str, tally: Tally) -> None:
    target = caption_path(path, cfg.caption_extension)
    try:
        changed = save_caption_text(target, caption, cfg.existing_captions)
    except OSError as exc:
        tally.fail(ctx, f"cannot write the caption file {target}: {exc.strerror or exc}", path)
        return
    if changed:
        tally.written += 1
    else:
        tally.unchanged += 1


def run(cfg: BlipCaptionConfig, ctx: JobContext) -> dict:
    """The `caption` job: write a BLIP sentence to the caption file of every image."""
    started = time.perf_counter()
    todo, skipped = images_to_caption(cfg, lambda path, reason: ctx.warning(reason, path))
    blip = load_blip(cfg.model_dir)
    method = (f"beam search ({cfg.num_beams} beams)" if cfg.beam_search
              else f"nucleus sampling (top_p {cfg.top_p}, seed {cfg.seed})")
    ctx.log(f"BLIP from {cfg.model_dir} on {blip.device} in {str(blip.dtype).removeprefix('torch.')}, "
            f"{method}, {cfg.min_length}-{cfg.max_length} tokens")
    tally = Tally(total=len(todo) + skipped, skipped=skipped)
    ctx.log(f"{tally.total} images: {len(todo)} to caption, {skipped} with a caption file already (skipped)")
    tally.report(ctx)
    complete = True
    try:
        caption_all(cfg, ctx, blip, todo, tally)
    except JobStopped:
        complete = False
        ctx.log("stopped: every caption written is complete; run again with existing_captions=skip to continue")
    seconds = time.perf_counter() - started
    ctx.log(f"captions {'complete' if complete else 'PARTIAL (stopped)'}: {tally.written} written, "
            f"{tally.unchanged} unchanged, {tally.skipped} skipped, {len(tally.failed_paths)} failed, "
            f"{seconds:.1f} s")
    return {"complete": complete, "images": tally.total, "written": tally.written, "skipped": tally.skipped,
            "unchanged": tally.unchanged, "failed": len(tally.failed_paths), "failed_paths": tally.failed_paths,
            "seconds": round(seconds, 3)}


def preview_captions(cfg: BlipCaptionConfig, limit: int = 4) -> list[tuple[str, str]]:
    """(image path, the caption the run would write, or append) for the first `limit` readable
    images the run would caption. Writes nothing."""
    blip = load_blip(cfg.model_dir)
    todo, _ = images_to_caption(cfg)
    chosen: list[tuple[Path, torch.Tensor]] = []
    for path in todo:
        if len(chosen) == limit:
            break
        try:
            chosen.append((path, pixels_of(blip, path, cfg.max_image_pixels)))
        except ImageError:
            continue
    if not chosen:
        return []
    paths = [path for path, _ in chosen]
    captions = generate_captions(blip, cfg, paths, torch.stack([px for _, px in chosen]))
    return [(str(path), caption) for path, caption in zip(paths, captions)]


def _reason(exc: Exception) -> str:
    if isinstance(exc, ImageError):
        return exc.reason
    return f"{type(exc).__name__}: {exc}"
