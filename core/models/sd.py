"""Whole Stable Diffusion models for training: load from a diffusers folder or one original-layout
file, save as either.

Single files are converted with diffusers' own single-file functions and loaded with strict key
checks, in fp32 on the CPU. Their component configs come from, in order: the `studio.configs`
metadata that our writer (save_single_file_of) puts in every file, the demo kit's included (exact,
any size); the published configs shipped in core/data/configs, chosen by the architecture the
keys show (SD 1.x / 2.x / XL) and by v-prediction (SD 2.x 768-v or 512). v-prediction is read
from the file's metadata or an A1111-style sibling .yaml; `v_parameterization` overrides it.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from core.fsutil import disk_full_error, is_disk_full, recover_folder, staging_folder, swap_in_folder
from core.models.arch import arch_of_folder, arch_of_keys, detect_v_prediction, read_json
from core.models.ldm_convert import family_of, to_ldm_state_dict
from core.models.loading import VAE_PREFIXES, Checkpoint, existing_path, load_vae
from core.models.single_file import modelspec_metadata, save_single_file, saved_bytes
from core.models.tokenizer import load_clip_tokenizer

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "data" / "configs"
CONFIGS_KEY = "studio.configs"  # safetensors metadata: the diffusers configs, as JSON
TEXT_ENCODERS = {"sd1": ("text_encoder",), "sd2": ("text_encoder",),
                 "sdxl": ("text_encoder", "text_encoder_2")}
TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
# Parts a base model needs, by the key prefixes of the original layout.
REQUIRED_PARTS = (("the U-Net", ("model.diffusion_model.",)), ("the VAE", VAE_PREFIXES),
                  ("the text encoder", ("cond_stage_model.", "conditioner.embedders.")))
NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                       "trained_betas", "rescale_betas_zero_snr")
PRECISIONS = {"fp32": torch.float32, "float": torch.float32, "float32": torch.float32,
              "fp16": torch.float16, "float16": torch.float16,
              "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@dataclass
class SDModel:
    arch: str                  # "sd1" | "sd2" | "sdxl"
    v_prediction: bool
    unet: object               # UNet2DConditionModel
    vae: object                # AutoencoderKL
    text_encoder: object       # CLIPTextModel
    tokenizer: object          # CLIPTokenizer
    noise_scheduler: object    # DDPMScheduler for training (SD betas, epsilon or v_prediction)
    scaling_factor: float
    source: str
    scheduler: object = None   # the model's inference scheduler, saved with it
    text_encoder_2: object = None  # SDXL only (CLIPTextModelWithProjection)
    tokenizer_2: object = None
    network: object = None     # a LyCORIS run's network (core/models/lycoris_net.py), saved instead of a LoRA


@dataclass(frozen=True)
class BaseModelKind:
    arch: str           # sd1 / sd2 / sdxl
    v_prediction: bool


def inspect_base_model(path: str, v_parameterization: bool | None = None) -> BaseModelKind:
    """The kind of the base model at `path` from names, headers and configs only (no weights are
    loaded): the checks load_sd_model makes before it loads, with the same ValueError messages."""
    base = existing_path(path)
    if base.is_dir():
        arch = _check_folder(base)
        v = _scheduler_config(base, arch).get("prediction_type") == "v_prediction"
    else:
        with Checkpoint(base) as ckpt:
            arch, metadata = base_model_arch(base, ckpt.keys), ckpt.metadata
        v = detect_v_prediction(base, metadata)
        if v is None:
            v = single_file_configs(base, arch, metadata, v_parameterization)["scheduler"].get(
                "prediction_type") == "v_prediction"
    return BaseModelKind(arch, v if v_parameterization is None else bool(v_parameterization))


def load_sd_model(path: str, vae_path: str = "", v_parameterization: bool | None = None) -> SDModel:
    """The model at `path` (diffusers pipeline folder or .safetensors/.ckpt), fp32 on the CPU, all
    parts in eval mode. `vae_path` replaces the VAE; `v_parameterization` True/False overrides the
    detected prediction type. Every problem is a ValueError naming the path."""
    base = existing_path(path)
    if base.is_dir():
        arch, models, scheduler_config, v_detected = _load_folder(base)
    else:
        arch, models, scheduler_config, v_detected = _load_single_file(base, v_parameterization)
    if base.is_dir() or str(vae_path).strip():
        models["vae"] = load_vae(base, vae_path)[0]
    v = v_detected if v_parameterization is None else bool(v_parameterization)
    scheduler, noise_scheduler = make_schedulers(scheduler_config, v)
    tokenizers = _tokenizers(base, arch)
    for module in models.values():
        module.float().eval()
    return SDModel(arch=arch, v_prediction=v, unet=models["unet"], vae=models["vae"],
                   text_encoder=models["text_encoder"], tokenizer=tokenizers["tokenizer"],
                   noise_scheduler=noise_scheduler,
                   scaling_factor=float(models["vae"].config.scaling_factor), source=str(base),
                   scheduler=scheduler, text_encoder_2=models.get("text_encoder_2"),
                   tokenizer_2=tokenizers.get("tokenizer_2"))


def make_schedulers(config: dict, v_prediction: bool):
    """(inference scheduler of the config's class, DDPMScheduler for training), both with the
    model's noise schedule and the given prediction type."""
    import diffusers
    from diffusers import DDPMScheduler, SchedulerMixin

    prediction = "v_prediction" if v_prediction else "epsilon"
    noise_scheduler = DDPMScheduler(**{k: config[k] for k in NOISE_SCHEDULE_KEYS if k in config},
                                    clip_sample=False, prediction_type=prediction)
    cls = getattr(diffusers, str(config.get("_class_name", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        return noise_scheduler, noise_scheduler
    return cls.from_config({**config, "prediction_type": prediction}), noise_scheduler


# --- diffusers folders -----------------------------------------------------------------------

def _model_class(part: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
            "text_encoder_2": CLIPTextModelWithProjection}[part]


def _check_folder(folder: Path) -> str:
    """The architecture of a diffusers pipeline folder; ValueError when it is not a whole one."""
    if not (folder / "model_index.json").is_file():
        detail = ""
        if (folder / "config.json").is_file():
            detail = (f": it holds one {read_json(folder / 'config.json').get('_class_name', 'model')}"
                      ", not a whole model")
        raise ValueError(f"{folder}: not a diffusers pipeline folder (no model_index.json){detail}; choose the "
                         "folder that holds model_index.json, or a single .safetensors/.ckpt file")
    arch = arch_of_folder(folder)
    missing = [f"{part}/" for part in ("unet", "vae", *TEXT_ENCODERS[arch])
               if not (folder / part / "config.json").is_file()]
    if missing:
        raise ValueError(f"{folder}: incomplete diffusers model, {', '.join(missing)} missing (with its "
                         "config.json); choose a complete model")
    return arch


def _scheduler_config(folder: Path, arch: str) -> dict:
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    return read_json(scheduler_file) if scheduler_file.is_file() else shipped_configs(arch, False)["scheduler"]


def _load_folder(folder: Path):
    arch = _check_folder(folder)
    models = {}
    for part in ("unet", *TEXT_ENCODERS[arch]):
        try:
            models[part] = _model_class(part).from_pretrained(folder, subfolder=part,
                                                              local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{folder}: cannot load the {part} ({exc})") from None
    scheduler_config = _scheduler_config(folder, arch)
    return arch, models, scheduler_config, scheduler_config.get("prediction_type") == "v_prediction"


def _tokenizers(base: Path, arch: str) -> dict:
    """The folder's own tokenizers when it has them, else the shipped CLIP tokenizer with SD's
    pad token for each text encoder."""
    from transformers import CLIPTokenizer

    out = {}
    for part in TEXT_ENCODERS[arch]:
        name = TOKENIZER_OF[part]
        if base.is_dir() and (base / name).is_dir():
            out[name] = CLIPTokenizer.from_pretrained(base, subfolder=name, local_files_only=True)
        else:
            open_clip = arch == "sd2" or part == "text_encoder_2"
            out[name] = load_clip_tokenizer("!" if open_clip else "<|endoftext|>")
    return out


# --- single files ----------------------------------------------------------------------------

def _load_single_file(path: Path, v_parameterization: bool | None):
    with Checkpoint(path) as ckpt:
        arch = base_model_arch(path, ckpt.keys)
        metadata = ckpt.metadata
        state = ckpt.tensors(lambda key: True)
    v = detect_v_prediction(path, metadata)
    configs = single_file_configs(path, arch, metadata,
                                  v if v_parameterization is None else v_parameterization)
    if v is None:
        v = configs["scheduler"].get("prediction_type") == "v_prediction"
    models = models_from_state(path, arch, state, configs)
    return arch, models, configs["scheduler"], v


def base_model_arch(path: Path, keys: list[str]) -> str:
    """sd1 / sd2 / sdxl for a whole original-layout checkpoint; ValueError for anything else."""
    if any("lora_" in k or k.endswith(".alpha") for k in keys[:2000]):
        raise ValueError(f"{path}: this is a LoRA, not a base model; choose a full checkpoint")
    arch = arch_of_keys(keys)
    if arch == "vae":
        raise ValueError(f"{path}: this is a VAE alone, not a base model; give it as the separate "
                         "VAE and choose a full checkpoint as the model")
    if arch == "unknown":
        if any(k.startswith(("down_blocks.", "unet.", "text_model.")) for k in keys):
            raise ValueError(f"{path}: weights of one model in the diffusers layout, not a whole "
                             "checkpoint; give the diffusers pipeline folder instead")
        raise ValueError(f"{path}: not a Stable Diffusion checkpoint ({len(keys)} tensors, "
                         f"e.g. {keys[:3]})")
    missing = [name for name, prefixes in REQUIRED_PARTS
               if not any(k.startswith(prefixes) for k in keys)]
    if missing:
        raise ValueError(f"{path}: not a whole base model, it has no weights for "
                         f"{' or '.join(missing)}")
    return arch


def shipped_configs(arch: str, v_prediction: bool) -> dict[str, dict]:
    """The published diffusers configs of SD 1.5, SD 2.1-base (512) / 2.1 (768-v) or SDXL base."""
    name = {"sd1": "sd1", "sd2": "sd2-768-v" if v_prediction else "sd2-512", "sdxl": "sdxl-base"}[arch]
    folder = CONFIG_ROOT / name
    configs = {part: read_json(folder / part / "config.json")
               for part in ("unet", "vae", *TEXT_ENCODERS[arch])}
    configs["scheduler"] = read_json(folder / "scheduler" / "scheduler_config.json")
    return configs


def single_file_configs(path: Path, arch: str, metadata: dict[str, str],
                        v_prediction: bool | None) -> dict[str, dict]:
    if CONFIGS_KEY in metadata:
        try:
            configs = json.loads(metadata[CONFIGS_KEY])
        except ValueError as exc:
            raise ValueError(f"{path}: damaged {CONFIGS_KEY} metadata ({exc})") from None
        expected = {"unet", "vae", "scheduler", *TEXT_ENCODERS[arch]}
        if not isinstance(configs, dict) or not expected <= set(configs):
            raise ValueError(f"{path}: {CONFIGS_KEY} metadata lacks some of {sorted(expected)}")
        return configs
    return shipped_configs(arch, bool(v_prediction))


def empty_model(part: str, config: dict):
    """The model of one part built from its config on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig

    cls = _model_class(part)
    with init_empty_weights():
        if part.startswith("text_encoder"):
            return cls(CLIPTextConfig.from_dict(config))
        return cls.from_config(config)


def convert_part(part: str, arch: str, model, state: dict[str, torch.Tensor]) -> dict:
    """One part's diffusers state dict from a whole original-layout state dict."""
    from diffusers.loaders import single_file_utils as sfu

    if part == "unet":
        return sfu.convert_ldm_unet_checkpoint(state, model.config)
    if part == "vae":
        return sfu.convert_ldm_vae_checkpoint(state, model.config)
    if part == "text_encoder" and arch != "sd2":
        converted = sfu.convert_ldm_clip_checkpoint(state)
    else:
        prefix = "cond_stage_model.model." if arch == "sd2" else "conditioner.embedders.1.model."
        converted = sfu.convert_open_clip_checkpoint(model, state, prefix=prefix)
    if not hasattr(model, "text_model"):  # transformers 5's CLIPTextModel has no text_model level
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return {k: v for k, v in converted.items() if not k.endswith("position_ids")}


def models_from_state(path: Path, arch: str, state: dict[str, torch.Tensor],
                      configs: dict[str, dict]) -> dict:
    """unet, vae and text encoder(s), strictly loaded from a whole original-layout state dict."""
    models = {}
    for part in ("unet", "vae", *TEXT_ENCODERS[arch]):
        model = empty_model(part, configs[part])
        converted = convert_part(part, arch, model, state)
        _load_strict(path, part, model, converted)
        models[part] = model
    return models


def _load_strict(path: Path, part: str, model, state: dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in sorted(set(state) & set(expected))
             if tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: the {part} weights do not fit its architecture: "
                         f"{len(missing)} missing (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
                         f"{len(wrong)} of another shape (e.g. {wrong[:2]})")
    state = {k: v.to(torch.float32, copy=True) if v.is_floating_point() and v.device.type != "meta"
             else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)


# --- saving ----------------------------------------------------------------------------------

def model_configs(model) -> dict[str, dict]:
    """The diffusers configs of a model's parts (an SDModel or a diffusers pipeline)."""
    out = {}
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(model, part, None)
        if module is not None:
            config = module.config
            out[part] = (config.to_dict() if hasattr(config, "to_dict")
                         else {"_class_name": type(module).__name__, **config})
    scheduler = getattr(model, "scheduler", None) or model.noise_scheduler
    out["scheduler"] = {"_class_name": type(scheduler).__name__, **scheduler.config}
    return json.loads(json.dumps({part: {k: v for k, v in config.items() if k != "_name_or_path"}
                                  for part, config in out.items()}, default=str))


def save_sd_model(model: SDModel, path: str | os.PathLike, save_as: str, precision: str,
                  metadata: dict | None = None) -> Path:
    """Save `model` as one original-layout .safetensors file (`save_as="safetensors"`, with
    modelspec, `metadata` and our configs in its header) or as a diffusers folder
    (`save_as="diffusers"`), weights cast to `precision` (fp32/fp16/bf16). Atomic either way:
    a crash leaves the previous file or folder. Returns the path."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown save precision {precision!r}; expected fp32, fp16 or bf16")
    dtype, path = PRECISIONS[precision], Path(path).expanduser()
    if save_as == "safetensors":
        return _save_single_file(model, path, dtype, metadata or {})
    if save_as == "diffusers":
        return _save_diffusers(model, path, dtype)
    raise ValueError(f"save_model_as must be 'safetensors' or 'diffusers', not {save_as!r}")


def _save_single_file(model: SDModel, path: Path, dtype, metadata: dict) -> Path:
    return save_single_file_of(model, model.arch, model.v_prediction, path, dtype, metadata)


def save_single_file_of(parts, arch: str, v_prediction: bool, path: str | os.PathLike, dtype,
                        metadata: dict) -> Path:
    """The U-Net, VAE and text encoder(s) of `parts` (an SDModel or a diffusers pipeline) as one
    original-layout .safetensors file, with modelspec, `metadata` and the parts' diffusers configs
    in its header, so that it loads back exactly whatever its size."""
    family, path = family_of(arch), Path(path)
    spec_arch = "sd2v" if family == "sd2" and v_prediction else family
    header = {**modelspec_metadata(spec_arch, path.stem, v_prediction), "studio.arch": family,
              "studio.prediction_type": "v_prediction" if v_prediction else "epsilon", **metadata,
              CONFIGS_KEY: json.dumps(model_configs(parts))}
    state = to_ldm_state_dict(family, parts.unet, parts.vae, parts.text_encoder,
                              getattr(parts, "text_encoder_2", None))
    return save_single_file(path, state, dtype, header)


def _save_diffusers(model: SDModel, target: Path, dtype) -> Path:
    """Write the folder beside `target`, then swap it in (core.fsutil.swap_in_folder)."""
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target}: exists and is not a folder; cannot save a diffusers model there")
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recover_folder(target)
        staging = staging_folder(target)
        write_diffusers_folder(model, staging, dtype)
        swap_in_folder(staging, target)
    except BaseException as exc:
        full = is_disk_full(exc, target)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise disk_full_error(target, exc, diffusers_folder_bytes(model, dtype)) from exc
        raise
    return target


def diffusers_folder_bytes(model: SDModel, dtype) -> int:
    """About how many bytes write_diffusers_folder writes: the weights in `dtype`, and the tokenizer files
    (megabytes each, as much as a tiny model's weights)."""
    weights = (tensor for part in ("unet", "vae", *TEXT_ENCODERS[model.arch])
               for tensor in getattr(model, part).state_dict().values())
    tokenizers = (getattr(getattr(model, TOKENIZER_OF[part]), "backend_tokenizer", None)
                  for part in TEXT_ENCODERS[model.arch])
    return saved_bytes(weights, dtype) + sum(len(t.to_str(pretty=True)) for t in tokenizers if t is not None)


def write_diffusers_folder(model: SDModel, folder: Path, dtype) -> None:
    """unet/vae/text encoder(s) (config + safetensors weights in `dtype`), tokenizer(s), scheduler
    and model_index.json: the layout DiffusionPipeline.save_pretrained writes."""
    import diffusers

    index = {"_class_name": "StableDiffusionXLPipeline" if model.arch == "sdxl"
             else "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__}
    for part in ("unet", "vae", *TEXT_ENCODERS[model.arch]):
        module = getattr(model, part)
        if part.startswith("text_encoder"):
            module.config.architectures = [type(module).__name__]
            module.config.save_pretrained(folder / part)
            weights, library = "model.safetensors", "transformers"
        else:
            module.save_config(folder / part)
            weights, library = "diffusion_pytorch_model.safetensors", "diffusers"
        save_single_file(folder / part / weights, module.state_dict(), dtype, {"format": "pt"})
        index[part] = [library, type(module).__name__]
    for part in TEXT_ENCODERS[model.arch]:
        name = TOKENIZER_OF[part]
        tokenizer = getattr(model, name)
        tokenizer.save_pretrained(folder / name)
        index[name] = ["transformers", type(tokenizer).__name__]
    scheduler = model.scheduler or model.noise_scheduler
    scheduler.save_pretrained(folder / "scheduler")
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    index.update({"force_zeros_for_empty_prompt": True} if model.arch == "sdxl" else
                 {"safety_checker": [None, None], "feature_extractor": [None, None],
                  "requires_safety_checker": False})
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
