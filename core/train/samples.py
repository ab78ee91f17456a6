"""Sample images during training from a kohya-style prompt file and/or one prompt typed in the
settings (`sample_prompt`, same syntax), with an optional CLIP score.

A prompt file holds one prompt a line (blank lines and `#` comments skipped) with kohya's options:
`a cat, masterpiece --n lowres, blurry --w 512 --h 768 --s 28 --l 7 --d 42` (negative prompt,
width, height, steps, CFG scale, seed). Sampling never changes training: it runs without grad,
with the models in eval mode (their modes restored after) and inside `torch.random.fork_rng`, so
a run with samples trains bit-identical weights to one without.
"""
from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from core.config.models import PromptSettings
from core.fsutil import atomic_path
from core.train.conditioning import PromptEncoder

OPTION_SPLIT = re.compile(r"(?:^|\s+)--(?=\S)")  # " --x" starts an option
INT_OPTIONS = {"w": "width", "h": "height", "s": "steps", "d": "seed"}
OPTION_HELP = "--n negative prompt, --w width, --h height, --s steps, --l CFG scale, --d seed"
CLIP_FOLDER_HELP = ("a local CLIP model folder (for example openai/clip-vit-base-patch32 downloaded from the "
                    "Hugging Face hub) with config.json, the model weights (model.safetensors), the tokenizer "
                    "files and preprocessor_config.json")


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 30
    scale: float = 7.5
    seed: int | None = None  # None: the run's sample seed plus the prompt's index


@dataclass(frozen=True)
class Sample:
    """One written sample image and what made it."""
    path: Path
    prompt: SamplePrompt
    seed: int
    clip_score: float | None = None


def parse_prompt_line(line: str) -> SamplePrompt | None:
    """The prompt of one line of a prompt file, None for a blank or `#` comment line."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    prompt, *options = OPTION_SPLIT.split(line)
    fields: dict = {}
    for option in options:
        name, *value = option.split(maxsplit=1)
        fields.update(_option_field(name.lower(), value[0].strip() if value else ""))
    return SamplePrompt(prompt.strip(), **fields)


def _option_field(name: str, value: str) -> dict:
    if name == "n":
        return {"negative_prompt": value}
    if name == "l":
        try:
            scale = float(value)
        except ValueError:
            scale = math.nan
        if not math.isfinite(scale):
            raise ValueError(f"--l (CFG scale) needs a number, got {value!r}")
        return {"scale": scale}
    if name not in INT_OPTIONS:
        raise ValueError(f"unknown option --{name} (the options are {OPTION_HELP})")
    field = INT_OPTIONS[name]
    if not re.fullmatch(r"\d+", value):
        raise ValueError(f"--{name} ({field}) needs a whole number, got {value!r}")
    number = int(value)
    if field in ("width", "height"):
        number = max(64, number - number % 8)  # as kohya: a multiple of 8, at least 64
    elif field == "steps" and number < 1:
        raise ValueError("--s (steps) must be at least 1")
    return {field: number}


def read_prompt_file(path: str | Path) -> list[SamplePrompt]:
    """Every prompt of a UTF-8 prompt file; a ValueError names `path:line` for a bad line."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the sample prompt file ({exc})") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        try:
            prompt = parse_prompt_line(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
        if prompt is not None:
            prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: the sample prompt file has no prompt (only blank or # comment lines)")
    return prompts


class PromptError(ValueError):
    """A prompt that cannot be read: `field`, the setting it came from (sample_prompts or sample_prompt), and
    `message`, the problem."""
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def run_prompts(sample_prompts: str, sample_prompt: str) -> list[SamplePrompt]:
    """The prompts a run samples: the prompt file's (`sample_prompts`, a path), then `sample_prompt` (one
    line in the same syntax); [] when both are empty. A PromptError names the setting and the problem."""
    prompts = []
    if sample_prompts.strip():
        try:
            prompts += read_prompt_file(sample_prompts)
        except ValueError as exc:
            raise PromptError("sample_prompts", str(exc)) from None
    if sample_prompt.strip():
        try:
            prompt = parse_prompt_line(sample_prompt)
        except ValueError as exc:
            raise PromptError("sample_prompt", str(exc)) from None
        if prompt is None:
            raise PromptError("sample_prompt", "only a # comment, no prompt")
        prompts.append(prompt)
    return prompts


def generate_samples(model, unet, prompts: Sequence[SamplePrompt], out_dir: str | Path, step: int, *,
                     seed: int, prompt_settings: PromptSettings = PromptSettings(),
                     device: str | torch.device = "cpu", autocast: Callable = contextlib.nullcontext,
                     ctx=None, clip_dir: str = "") -> list[Sample]:
    """Write one image per prompt to `out_dir/step{step:08d}-{i:02d}.png` and return them.

    `model` is the SDModel (VAE, tokenizers, text encoders, inference scheduler; SD 1/2 or XL);
    `unet` the unwrapped U-Net being trained, already on `device`. A prompt's seed is its `--d`, else
    `seed + i`; the noise is drawn on the CPU, so a seed gives the same image on any device. A
    prompt that fails is a warning (on `ctx`) and the others go on. With `clip_dir`, each sample
    gets a CLIP score and `ctx` gets their mean as the metric "clip_score"."""
    out_dir, device = Path(out_dir), torch.device(device)
    encoder = PromptEncoder(model, prompt_settings, device)
    modules = (unet, *encoder.text_encoders, model.vae)
    was_training = [module.training for module in modules]
    samples, images = [], []
    try:
        for module in modules:
            module.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            pipe = pipeline_of(model, unet)
            for i, prompt in enumerate(prompts):
                sample_seed = prompt.seed if prompt.seed is not None else seed + i
                try:
                    with autocast():
                        image = _generate(pipe, encoder, prompt, sample_seed)
                    path = out_dir / f"step{step:08d}-{i:02d}.png"
                    _save_png(image, path, prompt, sample_seed)
                except Exception as exc:  # one bad prompt (out of memory, ...) never stops training
                    _warn(ctx, f"sample {i} ({prompt.prompt[:60]!r}) failed: {type(exc).__name__}: {exc}")
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                else:
                    samples.append(Sample(path, prompt, sample_seed))
                    images.append(image)
                    if ctx is not None:
                        ctx.image(path)
            samples = _with_clip_scores(samples, images, clip_dir, ctx)
    finally:
        for module, training in zip(modules, was_training):
            module.train(training)
    _report(ctx, samples, len(prompts), out_dir, step)
    return samples


def pipeline_of(model, unet):
    """A StableDiffusionPipeline (or XL) over the model's modules and `unet`, with a fresh copy of the
    inference scheduler."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    source = model.scheduler or model.noise_scheduler
    common = dict(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=unet,
                  scheduler=type(source).from_config(source.config))
    if model.arch == "sdxl":
        pipe = StableDiffusionXLPipeline(**common, text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2)
    else:
        pipe = StableDiffusionPipeline(**common, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeds(states: torch.Tensor, pooled: torch.Tensor | None, count: int = 1) -> dict:
    """Pipeline arguments for encoded [prompt, negative prompt] states (and SDXL's pooled ones),
    repeated for `count` images."""
    def pair(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (tensor[:1].expand(count, *tensor.shape[1:]), tensor[1:].expand(count, *tensor.shape[1:]))

    kwargs = dict(zip(("prompt_embeds", "negative_prompt_embeds"), pair(states)))
    if pooled is not None:
        kwargs.update(zip(("pooled_prompt_embeds", "negative_pooled_prompt_embeds"), pair(pooled)))
    return kwargs


def _generate(pipe, encoder, prompt: SamplePrompt, seed: int):
    """One PIL image, the prompts encoded the way training encodes captions (prompt settings, chunks)."""
    states, pooled = encoder.encode([prompt.prompt, prompt.negative_prompt])
    return pipe(**prompt_embeds(states, pooled), width=prompt.width, height=prompt.height,
                num_inference_steps=prompt.steps, guidance_scale=prompt.scale,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="pil").images[0]


def parameters_text(prompt: SamplePrompt, seed: int) -> str:
    """The generation parameters in AUTOMATIC1111's PNG "parameters" format."""
    negative = f"\nNegative prompt: {prompt.negative_prompt}" if prompt.negative_prompt else ""
    return (f"{prompt.prompt}{negative}\nSteps: {prompt.steps}, CFG scale: {prompt.scale:g}, Seed: {seed}, "
            f"Size: {prompt.width}x{prompt.height}")


def _save_png(image, path: Path, prompt: SamplePrompt, seed: int) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters_text(prompt, seed))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def _with_clip_scores(samples: list[Sample], images: list, clip_dir: str, ctx) -> list[Sample]:
    if not clip_dir.strip() or not samples:
        return samples
    try:
        scores = clip_scores(images, [s.prompt.prompt for s in samples], clip_dir)
    except ValueError as exc:
        _warn(ctx, f"no CLIP scores: {exc}")
        return samples
    return [Sample(s.path, s.prompt, s.seed, score) for s, score in zip(samples, scores)]


def _report(ctx, samples: list[Sample], total: int, out_dir: Path, step: int) -> None:
    if ctx is None:
        return
    scores = [s.clip_score for s in samples if s.clip_score is not None]
    mean = f", mean CLIP score {sum(scores) / len(scores):.2f}" if scores else ""
    ctx.log(f"step {step}: {len(samples)} of {total} sample images in {out_dir}{mean}")
    if scores:
        ctx.metric("clip_score", step, sum(scores) / len(scores))


def _warn(ctx, message: str) -> None:
    if ctx is not None:
        ctx.warning(message)


def clip_scores(images: Sequence, prompts: Sequence[str], clip_dir: str | Path) -> list[float]:
    """CLIP score of each (image, prompt) pair as torchmetrics computes it: 100 * the cosine of the
    image and text embeddings, at least 0. The model (on the CPU) comes from the local `clip_dir`."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    model, tokenizer, processor = load_clip(clip_dir)
    text = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt",
                     max_length=model.config.text_config.max_position_embeddings)
    pixels = processor(images=[image.convert("RGB") for image in images], return_tensors="pt").pixel_values
    with torch.no_grad():
        out = model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels)
    image_embeds = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
    text_embeds = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
    return (100 * (image_embeds * text_embeds).sum(dim=-1)).clamp(min=0).tolist()


def clip_folder_problem(folder: str | Path) -> str | None:
    """Why `folder` cannot hold a CLIP model (from its files only), None when it may."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        return f"{path}: no such folder; the CLIP model must be {CLIP_FOLDER_HELP}"
    if not (path / "config.json").is_file():
        return f"{path}: no CLIP model here (no config.json); it must be {CLIP_FOLDER_HELP}"
    return None


def load_clip(folder: str | Path):
    """(CLIPModel in eval mode, tokenizer, image processor) from a local folder, loaded once."""
    return _load_clip(str(Path(folder).expanduser().resolve()))


@lru_cache(maxsize=2)
def _load_clip(folder: str):
    from transformers import AutoImageProcessor, CLIPModel, CLIPTokenizer

    path = Path(folder)
    if problem := clip_folder_problem(path):
        raise ValueError(problem)
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True).float().eval()
        tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True, backend="pil")
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: cannot load a CLIP model ({type(exc).__name__}: {exc}); "
                         f"it must be {CLIP_FOLDER_HELP}") from None
    return model, tokenizer, processor
