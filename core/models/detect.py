"""What kind of model a file's tensor names, shapes and metadata, or a folder's configs, describe: the rules
of the model library (core/models/library.py), without torch and without reading any weights.

Kinds: checkpoint (a whole SD model in the original layout), unet, vae, text_encoder, lora (kohya,
LyCORIS, diffusers/peft), embedding (textual inversion), diffusers (a pipeline folder), tagger (WD14),
captioner (BLIP, BLIP-2, Florence-2, Qwen-VL, LLaVA, SmolVLM, Idefics3), clip (a CLIP model, for sample scores),
unknown.
Architectures: sd1, sd2, sdxl, unknown; the library adds "-v" for v-prediction (sd2-v).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from core.filenames import WD14_FILES
from core.models.arch import arch_of_folder, arch_of_keys
from core.models.pickle_scan import TensorInfo

KINDS = ("checkpoint", "unet", "vae", "text_encoder", "lora", "embedding", "diffusers", "tagger", "captioner",
         "clip", "unknown")
SD_ARCHS = ("sd1", "sd2", "sdxl")
CONTEXT_DIMS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}  # the U-Net's cross-attention width
TEXT_WIDTHS = {768: "sd1", 1024: "sd2", 1280: "sdxl"}   # a text encoder's (SDXL's first is SD 1's CLIP-L)
LORA_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".hada_w",
                ".lokr_w", ".on_input")  # .on_input: LyCORIS (IA)^3
LYCORIS_MARKERS = ((".hada_w", "loha"), (".lokr_w", "lokr"))
DIFFUSERS_COMPONENTS = {"UNet2DConditionModel": "unet", "AutoencoderKL": "vae"}
SDXL_VAE_SCALING = 0.13025
CAPTIONER_TYPES = {"blip": "blip", "blip-2": "blip-2", "blip_2": "blip-2", "florence2": "florence2",
                   "qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl", "llava": "llava",
                   "llava_next": "llava", "llava_onevision": "llava", "smolvlm": "smolvlm", "idefics3": "idefics3"}
TEXT_ENCODER_TYPES = ("clip_text_model", "clip_text_model_with_projection")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf")
CONFIG_LIMIT = 2**20  # a model's config.json is a few KB


@dataclass
class Detected:
    kind: str
    arch: str = "unknown"
    family: str = ""  # lora / locon / loha / lokr; inpaint; wd14; blip, qwen2.5-vl, ...; a pipeline's class
    metadata: dict = field(default_factory=dict)  # a folder's config facts
    problem: str = ""


def precision_of(dtypes: Iterable[str]) -> str:
    """fp16 / bf16 / fp32 / fp64 / fp8 of the floating-point tensors, "mixed" for several, "" for none."""
    names = {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F64": "fp64"}
    found = {names.get(d, "fp8" if d.startswith("F8") else "") for d in dtypes} - {""}
    return found.pop() if len(found) == 1 else ("mixed" if found else "")


def _in_width(info: TensorInfo | None) -> int | None:
    return int(info.shape[1]) if info is not None and len(info.shape) >= 2 else None


def _first(tensors: Mapping[str, TensorInfo], *endings: str) -> TensorInfo | None:
    return next((info for key, info in tensors.items() if key.endswith(endings)), None)


def metadata_arch(metadata: Mapping[str, str]) -> str | None:
    """The family the metadata names: ours (studio.arch), Stability's modelspec, kohya's ss_*."""
    studio = metadata.get("studio.arch", "").removesuffix("v")
    if studio in SD_ARCHS:
        return studio
    spec = metadata.get("modelspec.architecture", "")
    for prefix, arch in (("stable-diffusion-xl", "sdxl"), ("stable-diffusion-v2", "sd2"),
                         ("stable-diffusion-v1", "sd1")):
        if spec.startswith(prefix):
            return arch
    base = metadata.get("ss_base_model_version", "")
    for prefix, arch in (("sdxl", "sdxl"), ("sd_v2", "sd2"), ("sd_v1", "sd1")):
        if base.startswith(prefix):
            return arch
    return "sd2" if metadata.get("ss_v2", "").lower() == "true" else None


def detect_tensors(tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str]) -> Detected:
    """The kind, architecture and family of a single file from its tensors (names, shapes) and metadata."""
    keys = list(tensors)
    if any(marker in key for key in keys for marker in LORA_MARKERS):
        return Detected("lora", _lora_arch(tensors, metadata), _lora_family(tensors, metadata))
    if embedding := _embedding_arch(tensors):
        return Detected("embedding", embedding)
    has_unet = any(k.startswith("model.diffusion_model.") for k in keys)
    by_keys = arch_of_keys(keys)
    if by_keys in SD_ARCHS and has_unet:
        in_channels = tensors.get("model.diffusion_model.input_blocks.0.0.weight")
        inpaint = in_channels is not None and len(in_channels.shape) == 4 and in_channels.shape[1] == 9
        return Detected("checkpoint", by_keys, "inpaint" if inpaint else "")
    if by_keys == "vae" or (not has_unet and any(k.endswith("encoder.conv_in.weight") for k in keys)):
        return Detected("vae", metadata_arch(metadata) or "unknown")
    if has_unet or ("conv_in.weight" in tensors and any(k.startswith("down_blocks.") for k in keys)):
        width = _in_width(_first(tensors, "attn2.to_k.weight"))
        return Detected("unet", CONTEXT_DIMS.get(width) or metadata_arch(metadata) or "unknown")
    if query := _first(tensors, "self_attn.q_proj.weight"):
        return Detected("text_encoder", TEXT_WIDTHS.get(_in_width(query), "unknown"))
    return Detected("unknown", metadata_arch(metadata) or "unknown")


def _lora_arch(tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str]) -> str:
    """The base a LoRA was trained for: SDXL's two text encoders, the width of the U-Net's cross-attention
    keys (768 / 1024 / 2048) or of the text encoder, then the metadata, then kohya's SDXL U-Net names."""
    keys = list(tensors)
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.", "te2.")) for k in keys):
        return "sdxl"
    for key, info in tensors.items():
        if "attn2" in key and ("to_k" in key or "to_v" in key):
            width = _lora_in_width(key, info, tensors)
            if width in CONTEXT_DIMS:
                return CONTEXT_DIMS[width]
    for key, info in tensors.items():
        if key.startswith(("lora_te_", "text_encoder.")) and ("q_proj" in key or "fc1" in key):
            width = _lora_in_width(key, info, tensors)
            if width in (768, 1024):
                return TEXT_WIDTHS[width]
    if arch := metadata_arch(metadata):
        return arch
    return "sdxl" if any(k.startswith("lora_unet_input_blocks_") for k in keys) else "unknown"


def _lora_in_width(key: str, info: TensorInfo, tensors: Mapping[str, TensorInfo]) -> int | None:
    """The input width of the layer a LoRA tensor adapts: the down (A) matrix's second dimension, LoHa's
    w1_b's, LoKr's product of w1's and w2's."""
    if key.endswith((".lora_down.weight", ".lora_A.weight", ".lora.down.weight", ".hada_w1_b")):
        return _in_width(info)
    if key.endswith(".lokr_w1"):
        w2 = tensors.get(key[:-1] + "2") or tensors.get(key.removesuffix("_w1") + "_w2_b")
        return _in_width(info) * _in_width(w2) if _in_width(info) and _in_width(w2) else None
    return None


def _lora_family(tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str]) -> str:
    """lora, locon (LoRA on 3x3 convolutions too), loha, lokr, or the LyCORIS algorithm the metadata names."""
    for marker, family in LYCORIS_MARKERS:
        if any(marker in key for key in tensors):
            return family
    try:
        algo = json.loads(metadata.get("ss_network_args") or "{}").get("algo", "")
    except (ValueError, AttributeError):
        algo = ""
    if algo:
        return "locon" if algo in ("lora", "locon") else str(algo)
    conv = any(key.endswith((".lora_down.weight", ".lora_A.weight")) and len(info.shape) == 4
               and tuple(info.shape[2:]) != (1, 1) for key, info in tensors.items())
    return "locon" if conv else "lora"


def _embedding_arch(tensors: Mapping[str, TensorInfo]) -> str | None:
    """A textual inversion's base from its vector width (A1111's string_to_param, emb_params; SDXL's clip_l
    + clip_g); None when the file is not one."""
    keys = set(tensors)
    if {"clip_l", "clip_g"} <= keys:
        return "sdxl"
    vector = tensors.get("emb_params") or next(
        (info for key, info in tensors.items() if key.startswith("string_to_param.")), None)
    if vector is None:
        return None
    return TEXT_WIDTHS.get(int(vector.shape[-1]), "unknown") if vector.shape else "unknown"


def read_config(path: Path) -> dict:
    """A model folder's JSON config; ValueError with the reason when it is too big or not a JSON object."""
    try:
        if path.stat().st_size > CONFIG_LIMIT:
            raise ValueError(f"{path.name} is too big for a model config")
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path.name} ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return config


def detect_folder(folder: Path) -> Detected | None:
    """What a folder holds when it is one model (a diffusers pipeline or component, a WD14 tagger, a
    transformers captioner / text encoder / CLIP), None when it is an ordinary folder to look into."""
    if (folder / "model_index.json").is_file():
        return _diffusers_pipeline(folder)
    if all((folder / name).is_file() for name in WD14_FILES):
        empty = (folder / "model.onnx").stat().st_size == 0
        return Detected("tagger", family="wd14", problem="model.onnx is an empty file" if empty else "")
    if not (folder / "config.json").is_file():
        return None
    try:
        config = read_config(folder / "config.json")
    except ValueError as exc:
        return Detected("unknown", problem=str(exc))
    found = _component(config) if "_class_name" in config else _transformers(config) if "model_type" in config \
        else None
    if found and not found.problem and not any(p.suffix.lower() in WEIGHT_SUFFIXES for p in folder.iterdir()):
        found.problem = "no weights in this folder (config.json alone)"
    return found


def _diffusers_pipeline(folder: Path) -> Detected:
    try:
        index = read_config(folder / "model_index.json")
        name = str(index.get("_class_name", ""))
        if not name.startswith("StableDiffusion") or name.startswith("StableDiffusion3"):
            return Detected("diffusers", family=name, metadata={"_class_name": name})
        arch = arch_of_folder(folder)
        scheduler = folder / "scheduler" / "scheduler_config.json"
        if scheduler.is_file() and read_config(scheduler).get("prediction_type") == "v_prediction":
            arch += "-v"
    except ValueError as exc:
        return Detected("diffusers", problem=str(exc))
    return Detected("diffusers", arch, metadata={"_class_name": name})


def _component(config: dict) -> Detected:
    """A diffusers component folder (unet/, vae/ alone): the U-Net's cross-attention width, the VAE's
    scaling factor (SDXL's differs)."""
    name = str(config["_class_name"])
    kind = DIFFUSERS_COMPONENTS.get(name, "unknown")
    if kind == "unet":
        width = config.get("cross_attention_dim")
        arch = CONTEXT_DIMS.get(width[0] if isinstance(width, list) and width else width, "unknown")
    else:
        arch = "sdxl" if kind == "vae" and config.get("scaling_factor") == SDXL_VAE_SCALING else "unknown"
    return Detected(kind, arch, "" if kind != "unknown" else name, {"_class_name": name})


def _transformers(config: dict) -> Detected:
    """A transformers model folder: a captioner (by model_type, or Florence-2's architectures), a CLIP text
    encoder, a CLIP model, or another model (unknown, its type named)."""
    model_type = str(config["model_type"])
    architectures = [str(a) for a in config.get("architectures") or []]
    facts = {"model_type": model_type, "architectures": architectures[:4]}
    if any("Florence2" in a for a in architectures):
        model_type = "florence2"
    if model_type in CAPTIONER_TYPES:
        return Detected("captioner", family=CAPTIONER_TYPES[model_type], metadata=facts)
    if model_type in TEXT_ENCODER_TYPES:
        return Detected("text_encoder", TEXT_WIDTHS.get(config.get("hidden_size"), "unknown"), metadata=facts)
    if model_type == "clip":
        return Detected("clip", metadata=facts)
    return Detected("unknown", family=model_type, metadata=facts)

