"""DreamBooth prior preservation: fill the class folder with images made by the base model.

Only the missing images are generated (images in subfolders count too), as `class-NNNNN.png` after
the highest class index in the folder, each with a caption file holding the class prompt. Image N is
generated from seed + N with CPU noise, so a stopped run that is started again writes the images an
uninterrupted run would.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

from core.captions.files import check_caption_path, read_caption
from core.config import parse_resolution
from core.config.dreambooth import ClassImagesConfig
from core.dataset.discovery import find_images
from core.fsutil import atomic_path, atomic_write_text
from core.jobs.protocol import JobStopped
from core.models.sd import load_sd_model
from core.train.conditioning import PromptEncoder
from core.train.samples import SamplePrompt, parameters_text, pipeline_of, prompt_embeds

CLASS_STEM = re.compile(r"class-(\d+)")
GPU_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run(cfg: ClassImagesConfig, ctx) -> dict:
    """The `class_images` job: generate the images the class folder lacks."""
    folder = Path(cfg.class_data_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    images = class_images_in(folder, on_error=lambda path, reason: ctx.warning(reason, path))
    existing, missing = len(images), max(0, cfg.num_class_images - len(images))
    if not missing:
        ctx.log(f"{folder} has {existing} images, {cfg.num_class_images} wanted: nothing to generate")
        return _result(existing, 0, cfg)
    first = next_class_index(p.path for p in images)
    ctx.log(f"{folder} has {existing} images: generating {missing} (class-{first:05d} on)")
    generated = _generate_missing(cfg, ctx, folder, range(first, first + missing))
    return _result(existing, generated, cfg)


def class_images_in(folder: Path, on_error=None) -> list:
    """The images of a class folder, subfolders included (kohya keeps regularization images in `N_name`
    subfolders), as the trainer reads them; none when the folder does not exist yet."""
    return find_images([folder], recursive=True, on_error=on_error) if folder.is_dir() else []


def next_class_index(paths) -> int:
    """One past the highest `class-NNNNN` index among the image paths (0 when there is none)."""
    indices = [int(m.group(1)) for m in (CLASS_STEM.fullmatch(Path(p).stem) for p in paths) if m]
    return max(indices, default=-1) + 1


def _result(existing: int, generated: int, cfg: ClassImagesConfig) -> dict:
    total = existing + generated
    return {"existing": existing, "generated": generated, "total": total,
            "complete": total >= cfg.num_class_images}


def _generate_missing(cfg: ClassImagesConfig, ctx, folder: Path, indices: range) -> int:
    """Generate the images of `indices` batch by batch, stopping between batches; returns the count."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = GPU_DTYPES[cfg.mixed_precision] if device.type == "cuda" else torch.float32
    model = _load_model(cfg, ctx, device, dtype)
    width, height = parse_resolution(cfg.resolution)
    prompt = SamplePrompt(cfg.class_prompt, cfg.negative_prompt, width, height, cfg.sample_steps,
                          cfg.guidance_scale)
    done = 0
    with torch.no_grad(), contextlib.suppress(JobStopped):  # a stopped run keeps and counts what it wrote
        pipe = pipeline_of(model, model.unet)
        states = encode_class_prompt(model, cfg, device, dtype)
        for start in range(0, len(indices), cfg.batch_size):
            ctx.check_stop(f"stopped after {done} of {len(indices)} images")
            batch = indices[start:start + cfg.batch_size]
            for index, image in zip(batch, _generate_batch(pipe, states, prompt, cfg.seed, batch)):
                _save_class_image(ctx, folder, index, image, prompt, cfg.seed + index)
                done += 1
                ctx.progress(done, len(indices))
    return done


def _load_model(cfg: ClassImagesConfig, ctx, device: torch.device, dtype: torch.dtype):
    model = load_sd_model(cfg.pretrained_model_name_or_path, cfg.vae)
    for module in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
        if module is not None:
            module.to(device, torch.float32 if module is model.vae and model.arch == "sdxl" else dtype).eval()
    ctx.log(f"model: {model.arch} from {model.source} on {device} ({str(dtype).removeprefix('torch.')})")
    return model


def encode_class_prompt(model, cfg: ClassImagesConfig, device, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """States [2, tokens, hidden] of the class prompt and the negative prompt, encoded as training
    does, and SDXL's pooled states (None for SD 1/2)."""
    states, pooled = PromptEncoder(model, cfg, device).encode(
        [cfg.class_prompt, cfg.negative_prompt])
    return states.to(device, dtype), None if pooled is None else pooled.to(device, dtype)


def _generate_batch(pipe, states: tuple, prompt: SamplePrompt, seed: int, batch: range) -> list:
    """PIL images of one batch; image N's noise comes from its own CPU generator seeded seed + N."""
    generators = [torch.Generator("cpu").manual_seed(seed + index) for index in batch]
    return pipe(**prompt_embeds(*states, count=len(batch)), width=prompt.width, height=prompt.height, num_inference_steps=prompt.steps,
                guidance_scale=prompt.scale, generator=generators, output_type="pil").images


def _save_class_image(ctx, folder: Path, index: int, image, prompt: SamplePrompt, seed: int) -> None:
    """Caption first, then the PNG (with A1111 "parameters"), both atomic; an existing caption is kept
    (one with the class prompt is what a crash between the two writes leaves)."""
    from PIL.PngImagePlugin import PngInfo

    path = folder / f"class-{index:05d}.png"
    caption = path.with_suffix(".txt")
    current = check_caption_path(caption, writing=True)
    if current.problem:
        ctx.warning(current.problem, caption)
    elif not current.present:
        atomic_write_text(caption, prompt.prompt)
    elif read_caption(caption) != prompt.prompt:
        ctx.warning("a caption file with other text is in the way; kept as it is", caption)
    info = PngInfo()
    info.add_text("parameters", parameters_text(prompt, seed))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    ctx.image(path)
