"""Demo kit: a tiny random-weight model and a small captioned dataset, offline, in seconds.

`OUT/model/` is a diffusers folder, `OUT/model.safetensors` the same weights as one file in the
original SD layout, `OUT/dataset/` drawn images with captions in kohya `N_name` repeat folders,
and `OUT/demo.json` the summary (it also marks the folder as made by this job).
Everything is built in a temporary folder inside OUT and moved into place at the end, so a
stopped or failed run leaves the previous demo untouched.
"""
from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import torch

from core.dataset.demo_kit import DEMO_ENTRIES, MARKER
from core.fsutil import atomic_write_json
from core.models.sd import save_single_file_of
from core.models.tokenizer import load_clip_tokenizer

STAGING_PREFIX = ".demo-"
MODEL_STEPS = 3  # progress steps before the images: build, save the folder, save the single file
TEXT_HIDDEN = {"sd1": (32,), "sd2v": (32,), "sdxl": (32, 64)}  # must differ: see build_pipeline
SAMPLE_SIZE = 32  # latent size the pipeline defaults to: 256 px, quick on CPU
# kohya `N_name` folders (N repeats) and their caption style: tags, then sentences
DATASET_FOLDERS = (("5_demo", "tags"), ("2_shapes", "sentence"))
IMAGE_SIZES = ((512, 512), (640, 384), (384, 640), (768, 512), (512, 768), (320, 320),
               (576, 448), (448, 576), (704, 384), (384, 384))
IMAGE_FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"))
COLORS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220),
          "yellow": (240, 210, 40), "purple": (140, 60, 180), "orange": (245, 140, 30),
          "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")


class _Silent:
    """Stand-in for a JobContext when the demo is built outside a job (tests, fixtures)."""

    def log(self, message: str) -> None:
        pass

    def progress(self, step: int, total: int) -> None:
        pass

    def check_stop(self) -> None:
        pass


def _text_encoder_config(hidden: int, open_clip: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=hidden, intermediate_size=hidden * 4, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=49408, max_position_embeddings=77, projection_dim=hidden,
        hidden_act="gelu" if open_clip else "quick_gelu")


def _unet(arch: str, cross_attention_dim: int, pooled_dim: int):
    """A (32, 64)-channel UNet with SD's structure: SD1 conv attention projections, SD2 linear
    ones with per-block heads, SDXL no attention in the first block, depth 2 in the second and
    the text_time added embedding."""
    from diffusers import UNet2DConditionModel

    common = dict(sample_size=SAMPLE_SIZE, block_out_channels=(32, 64), layers_per_block=2,
                  norm_num_groups=32, cross_attention_dim=cross_attention_dim)
    if arch == "sd1":
        return UNet2DConditionModel(**common, attention_head_dim=8,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    if arch == "sd2v":
        return UNet2DConditionModel(**common, attention_head_dim=(2, 4), use_linear_projection=True,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    time_dim = 8
    return UNet2DConditionModel(**common, attention_head_dim=(2, 4), use_linear_projection=True,
                                transformer_layers_per_block=(1, 2),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                                projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim)


def _vae(arch: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                         sample_size=SAMPLE_SIZE * 8,
                         scaling_factor=0.13025 if arch == "sdxl" else 0.18215)


def _scheduler(arch: str):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction" if arch == "sd2v" else "epsilon",
        timestep_spacing="leading", steps_offset=1)


def _check_arch(arch: str) -> str:
    if arch not in TEXT_HIDDEN:
        raise ValueError(f"unknown demo architecture {arch!r}; expected one of {sorted(TEXT_HIDDEN)}")
    return arch


def build_pipeline(arch: str, seed: int = 0):
    """A tiny random-weight diffusers pipeline for `arch` (sd1, sd2v, sdxl), seeded.

    SDXL's two text encoders get different widths (32, 64): diffusers' single-file loader picks
    the checkpoint section for each encoder by its width, so equal widths would load the first
    encoder twice.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    hidden = TEXT_HIDDEN[_check_arch(arch)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _vae(arch)
        unet = _unet(arch, sum(hidden), hidden[-1])
        text_encoder = CLIPTextModel(_text_encoder_config(hidden[0], open_clip=arch == "sd2v"))
        if arch != "sdxl":
            return StableDiffusionPipeline(
                vae=vae, text_encoder=text_encoder, unet=unet, scheduler=_scheduler(arch),
                tokenizer=load_clip_tokenizer("!" if arch == "sd2v" else "<|endoftext|>"),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        text_encoder_2 = CLIPTextModelWithProjection(_text_encoder_config(hidden[1], open_clip=True))
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, unet=unet,
        tokenizer=load_clip_tokenizer(), tokenizer_2=load_clip_tokenizer("!"),
        scheduler=_scheduler(arch))


def parameter_counts(pipe) -> dict[str, int]:
    """Number of parameters of each model in the pipeline."""
    return {name: sum(p.numel() for p in module.parameters())
            for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def save_demo_single_file(pipe, arch: str, path: Path) -> Path:
    """The demo pipeline as one original-layout .safetensors file, with metadata saying so."""
    v_prediction = pipe.scheduler.config.prediction_type == "v_prediction"
    return save_single_file_of(pipe, arch, v_prediction, path, torch.float32,
                               {"studio.arch": arch, "studio.demo": "true"})


def _draw_shape(draw, shape: str, box: tuple[int, int, int, int], color) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)


def draw_image(rng: random.Random, size: tuple[int, int]):
    """One image of 1-3 coloured shapes on a plain background, and the words describing it."""
    from PIL import Image, ImageDraw

    background = rng.choice(list(COLORS))
    image = Image.new("RGB", size, COLORS[background])
    draw = ImageDraw.Draw(image)
    kinds = [(color, shape) for color in COLORS if color != background for shape in SHAPES]
    shapes = []
    for color, shape in rng.sample(kinds, rng.randint(1, 3)):
        side = rng.randint(min(size) // 5, min(size) // 2)
        x, y = rng.randint(0, size[0] - side), rng.randint(0, size[1] - side)
        _draw_shape(draw, shape, (x, y, x + side, y + side), COLORS[color])
        shapes.append(f"{color} {shape}")
    return image, shapes, background


def caption_for(shapes: list[str], background: str, style: str) -> str:
    """Tags ("demo, red circle, blue background") or a sentence describing the drawing."""
    if style == "tags":
        return ", ".join(["demo", *shapes, f"{background} background"])
    things = [f"a {shape}" for shape in shapes]
    listed = things[0] if len(things) == 1 else f"{', '.join(things[:-1])} and {things[-1]}"
    return f"{listed} on a {background} background"


def write_dataset(folder: str | Path, num_images: int, seed: int, ctx=None, steps_before: int = 0,
                  total_steps: int | None = None) -> dict[str, int]:
    """Draw `num_images` captioned images into kohya repeat folders; returns images per folder.

    Progress is reported as steps `steps_before + i` of `total_steps` (default: the images).
    """
    ctx = ctx or _Silent()
    folder = Path(folder)
    total_steps = total_steps or steps_before + num_images
    rng = random.Random(seed)
    counts = {}
    for i in range(num_images):
        ctx.check_stop()
        subfolder, style = DATASET_FOLDERS[0] if i < (2 * num_images + 2) // 3 else DATASET_FOLDERS[1]
        image, shapes, background = draw_image(rng, IMAGE_SIZES[i % len(IMAGE_SIZES)])
        extension, image_format = IMAGE_FORMATS[i % len(IMAGE_FORMATS)]
        target = folder / subfolder
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"demo_{i:03d}.{extension}", image_format)
        (target / f"demo_{i:03d}.txt").write_text(caption_for(shapes, background, style),
                                                  encoding="utf-8")
        counts[subfolder] = counts.get(subfolder, 0) + 1
        ctx.progress(steps_before + i + 1, total_steps)
    return counts


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse to write into a folder that is not empty, unless overwriting an earlier demo."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"demo output {out} exists and is not a folder")
    if not [p for p in out.iterdir() if not p.name.startswith(STAGING_PREFIX)]:
        return
    if not overwrite:
        raise ValueError(f"demo output folder {out} is not empty; choose a new folder or set "
                         f"overwrite to replace an earlier demo there")
    ours = [name for name in DEMO_ENTRIES if (out / name).exists()]
    if ours and not (out / MARKER).is_file():
        raise ValueError(f"demo output folder {out} has {', '.join(ours)} not made by the demo job "
                         f"(no {MARKER}); refusing to replace them")


def _replace(out: Path, staging: Path) -> None:
    """Swap the freshly built entries into `out`, removing only the demo's own entries."""
    for name in DEMO_ENTRIES:
        old = out / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        (staging / name).replace(old)


def build_demo(out, arch: str = "sd1", num_images: int = 8, seed: int = 0,
               overwrite: bool = False, ctx=None) -> dict:
    """Build the demo kit in `out`; returns its summary (also written to OUT/demo.json)."""
    ctx = ctx or _Silent()
    _check_arch(arch)
    out = Path(out).expanduser().resolve()
    check_out_folder(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    total = MODEL_STEPS + num_images
    try:
        ctx.log(f"building a tiny {arch} model (seed {seed})")
        pipe = build_pipeline(arch, seed)
        ctx.progress(1, total)
        ctx.check_stop()
        pipe.save_pretrained(staging / "model")
        ctx.progress(2, total)
        ctx.check_stop()
        save_demo_single_file(pipe, arch, staging / "model.safetensors")
        ctx.progress(3, total)
        ctx.log(f"drawing {num_images} images")
        counts = write_dataset(staging / "dataset", num_images, seed, ctx, MODEL_STEPS, total)
        ctx.check_stop()
        _replace(out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {
        "out": str(out), "arch": arch, "seed": seed,
        "model_dir": str(out / "model"), "single_file": str(out / "model.safetensors"),
        "dataset_dir": str(out / "dataset"), "num_images": num_images,
        "images_per_folder": counts, "parameters": parameter_counts(pipe),
    }
    atomic_write_json(out / MARKER, summary)
    ctx.log(f"demo ready in {out}")
    return summary


def run(cfg, ctx) -> dict:
    """The `demo` job: build the demo kit described by a DemoConfig."""
    return build_demo(cfg.out, cfg.arch, cfg.num_images, cfg.seed, cfg.overwrite, ctx)
