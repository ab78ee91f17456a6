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
unless the text contains it already. Changed files are backed up by core.captions.files.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import NamedTuple

import torch

from core.captions.taggers.common import caption_images, first_decodable, images_to_do, save_sentence
from core.captions.taggers.sampling import NucleusSampler, image_seed
from core.config import BlipCaptionConfig
from core.dataset.images import open_image
from core.jobs.protocol import JobContext

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


def run(cfg: BlipCaptionConfig, ctx: JobContext) -> dict:
    """The `caption` job: write a BLIP sentence to the caption file of every image."""
    blip = load_blip(cfg.model_dir)
    method = (f"beam search ({cfg.num_beams} beams)" if cfg.beam_search
              else f"nucleus sampling (top_p {cfg.top_p}, seed {cfg.seed})")
    ctx.log(f"BLIP from {cfg.model_dir} on {blip.device} in {str(blip.dtype).removeprefix('torch.')}, "
            f"{method}, {cfg.min_length}-{cfg.max_length} tokens")
    return caption_images(cfg, ctx, "caption", cfg.batch_size, lambda path: _decoded(blip, cfg, path),
                          lambda items: _captions(blip, cfg, items),
                          lambda target, text: save_sentence(target, text, cfg.existing_captions))


def _decoded(blip: Blip, cfg: BlipCaptionConfig, path: Path) -> tuple[Path, torch.Tensor]:
    return path, pixels_of(blip, path, cfg.max_image_pixels)


def _captions(blip: Blip, cfg: BlipCaptionConfig, items: list[tuple[Path, torch.Tensor]]) -> list[str]:
    """Captions of decoded images; the paths seed nucleus sampling per image."""
    return generate_captions(blip, cfg, [path for path, _ in items], torch.stack([px for _, px in items]))


def preview_captions(cfg: BlipCaptionConfig, limit: int = 4) -> list[tuple[str, str]]:
    """(image path, the caption the run would write, or append) for the first `limit` readable
    images the run would caption. Writes nothing."""
    blip = load_blip(cfg.model_dir)
    todo, _ = images_to_do(cfg)
    chosen = [decoded for _, decoded in first_decodable(todo, lambda path: _decoded(blip, cfg, path), limit)]
    if not chosen:
        return []
    return [(str(path), caption) for (path, _), caption in zip(chosen, _captions(blip, cfg, chosen))]
