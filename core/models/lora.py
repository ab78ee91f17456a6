"""LoRA adapters for the SD U-Net and CLIP text encoder: inject (peft), save, load and merge.

A model's parts are given as a dict: "unet", "text_encoder" and, for SDXL, "text_encoder_2".
Saved files are either the kohya format that AUTOMATIC1111, ComfyUI and diffusers load
(`lora_unet_<diffusers module name, dots as underscores>.lora_down.weight` / `.lora_up.weight` /
`.alpha`; `lora_te_...` for the text encoder of SD 1/2, `lora_te1_...` / `lora_te2_...` for
SDXL's two) or the diffusers format (`unet.` / `text_encoder.` / `text_encoder_2.` prefixed peft
keys, as `save_lora_weights` writes).

Target presets, per part (a module is adapted when its name ends with one of the suffixes):
- attention: the attention projections (U-Net to_q/k/v/out.0, CLIP q/k/v/out_proj);
- attention_mlp: plus the feed-forward layers (U-Net ff.net.0.proj/ff.net.2, CLIP fc1/fc2);
- all_linear_conv: plus what kohya's LoCon covers in the U-Net: the transformer proj_in/proj_out
  and the ResNet and resampler layers (conv1, conv2, conv_shortcut, time_emb_proj, the down/up
  sampler convs). conv_in, conv_out and the time embedding stay frozen, as in kohya.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

from core.fsutil import atomic_path
from core.models.ldm_convert import original_key, unet_prefix_map
from core.models.single_file import saved_bytes

ADAPTER = "default"
_UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
_UNET_MLP = ("ff.net.0.proj", "ff.net.2")
_UNET_LOCON = ("proj_in", "proj_out", "conv1", "conv2", "conv_shortcut", "time_emb_proj",
               "downsamplers.0.conv", "upsamplers.0.conv")
_TE_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
_TE_MLP = ("fc1", "fc2")
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
KOHYA_PREFIXES_SDXL = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
TARGETS = {
    "attention": {"unet": _UNET_ATTENTION, "text_encoder": _TE_ATTENTION},
    "attention_mlp": {"unet": _UNET_ATTENTION + _UNET_MLP, "text_encoder": _TE_ATTENTION + _TE_MLP},
    "all_linear_conv": {"unet": _UNET_ATTENTION + _UNET_MLP + _UNET_LOCON,
                        "text_encoder": _TE_ATTENTION + _TE_MLP},
}


def target_modules(model: nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    """Names of the Linear/Conv2d modules of `model` whose name ends with one of `suffixes`."""
    return [name for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))
            and any(name == s or name.endswith("." + s) for s in suffixes)]


def _inject(model: nn.Module, names: list[str], rank: int, alpha: float, dropout: float,
            ranks: dict[str, tuple[int, float]] | None = None) -> None:
    from peft import LoraConfig

    ranks = {n: ranks.get(n, (rank, alpha)) for n in names} if ranks else {}
    if ranks:  # the most common rank and alpha as the config's: peft matches each pattern against each module
        rank, alpha = (Counter(values).most_common(1)[0][0] for values in zip(*ranks.values()))
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                 init_lora_weights="gaussian", target_modules=names,
                                 rank_pattern={n: r for n, (r, _) in ranks.items() if r != rank},
                                 alpha_pattern={n: a for n, (_, a) in ranks.items() if a != alpha}))
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)


def _suffixes(targets: str, part: str) -> tuple[str, ...]:
    return TARGETS[targets]["unet" if part == "unet" else "text_encoder"]


def add_lora(parts: dict[str, nn.Module], rank: int = 16, alpha: float = 16.0, dropout: float = 0.0,
             targets: str = "attention", ranks: dict[str, dict[str, tuple[int, float]]] | None = None
             ) -> dict[str, list[str]]:
    """Add a LoRA adapter (up weights zero: outputs unchanged) to each of `parts` (the U-Net and
    any text encoders); freeze everything else in them. `ranks`: part -> module -> its own (rank,
    alpha) (block_dims; rank 0: no adapter). Returns the adapted module names per part."""
    if targets not in TARGETS:
        raise ValueError(f"unknown LoRA targets {targets!r}; expected one of {sorted(TARGETS)}")
    adapted = {}
    for part, model in parts.items():
        own = (ranks or {}).get(part, {})
        adapted[part] = [n for n in target_modules(model, _suffixes(targets, part)) if own.get(n, (rank,))[0] > 0]
        _inject(model, adapted[part], rank, alpha, dropout, {n: own[n] for n in adapted[part] if n in own})
    return adapted


def _peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=ADAPTER)


def _module_alpha(model: nn.Module, module: str) -> float:
    """The alpha peft gave an adapted module (its LoraConfig's alpha, or its alpha_pattern entry)."""
    return float(model.get_submodule(module).lora_alpha[ADAPTER])


def kohya_prefixes(sdxl: bool) -> dict[str, str]:
    """kohya name prefix of each part: SDXL's text encoders are te1 and te2."""
    return KOHYA_PREFIXES_SDXL if sdxl else KOHYA_PREFIXES


def kohya_name(prefix: str, module: str) -> str:
    """kohya name of a module: the text encoders' keep transformers 4's `text_model.` root (which
    transformers 5 dropped), as A1111 and ComfyUI expect."""
    if prefix != "lora_unet_" and not module.startswith("text_model."):
        module = "text_model." + module
    return prefix + module.replace(".", "_")


def lora_state_dict_kohya(parts: dict[str, nn.Module], sdxl: bool = False,
                          alpha: float | None = None) -> dict[str, torch.Tensor]:
    """The adapters of `parts` as a kohya state dict; `alpha` defaults to the one each module was
    made with (block_alphas may give modules their own)."""
    out = {}
    prefixes = kohya_prefixes(sdxl)
    for part, model in parts.items():
        for key, value in _peft_state_dict(model).items():
            module, kind = key.rsplit(".lora_", 1)
            name = kohya_name(prefixes[part], module)
            out[f"{name}.lora_{'down' if kind == 'A.weight' else 'up'}.weight"] = value.detach().contiguous()
            out[f"{name}.alpha"] = torch.tensor(_module_alpha(model, module) if alpha is None else alpha)
    return out


def one_alpha(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A kohya state dict whose modules have different alphas (block_alphas) with the most common one for
    all: each other module's lora_up is scaled by its alpha / that alpha, so every update stays the same.
    diffusers' load_lora_weights (0.42) gives every module of a kohya SD file one alpha."""
    alphas = {key: value for key, value in state_dict.items() if key.endswith(".alpha")}
    if len({value.item() for value in alphas.values()}) < 2:
        return state_dict
    common = Counter(value.item() for value in alphas.values()).most_common(1)[0][0]
    out = dict(state_dict)
    for key, value in alphas.items():
        up = key.removesuffix(".alpha") + ".lora_up.weight"
        out[up] = (state_dict[up].float() * (value.item() / common)).to(state_dict[up].dtype)
        out[key] = torch.tensor(common)
    return out


def kohya_metadata(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> dict[str, str]:
    """The ss_* metadata A1111 and kohya tools read (rank and alpha of the first module), plus `metadata`."""
    down = next(k for k in state_dict if k.endswith(".lora_down.weight"))
    alpha = state_dict[down.replace(".lora_down.weight", ".alpha")].item()
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(state_dict[down].shape[0]),
            "ss_network_alpha": f"{alpha:g}", "format": "pt", **(metadata or {})}


def save_lora(path: str | Path, parts: dict[str, nn.Module], sdxl: bool = False, alpha: float | None = None,
              metadata: dict[str, str] | None = None, fmt: str = "kohya") -> Path:
    """Write the adapters of `parts` to one .safetensors file, atomically.

    kohya: with the ss_* metadata and `metadata`. diffusers: through the pipeline's
    `save_lora_weights`, which stores each adapter's LoraConfig (rank, alpha, targets) as the
    file's metadata; `alpha` and `metadata` do not apply to it.
    """
    from safetensors.torch import save_file

    path = Path(path)
    state_dict = one_alpha(lora_state_dict_kohya(parts, sdxl, alpha)) if fmt == "kohya" else None
    with atomic_path(path, saved_bytes(state_dict.values()) if state_dict else None) as tmp:
        if fmt == "kohya":
            save_file(state_dict, str(tmp), metadata=kohya_metadata(state_dict, metadata))
        elif fmt == "diffusers":
            _save_diffusers(tmp, parts, sdxl)
        else:
            raise ValueError(f"unknown LoRA format {fmt!r}; expected 'kohya' or 'diffusers'")
    return path


def _save_diffusers(tmp: Path, parts: dict[str, nn.Module], sdxl: bool) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    kwargs = {}
    for part, model in parts.items():
        kwargs[f"{part}_lora_layers"] = _peft_state_dict(model)
        kwargs[f"{part}_lora_adapter_metadata"] = model.peft_config[ADAPTER].to_dict()
    pipeline = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipeline.save_lora_weights(tmp.parent, weight_name=tmp.name, **kwargs)


def load_lora_kohya(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A kohya LoRA file's tensors and metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})


LYCORIS_MARKS = {"hada_w1_a": "LoHa", "lokr_w1": "LoKr", "lokr_w1_a": "LoKr", "oft_blocks": "OFT",
                 "oft_diag": "OFT", "dora_scale": "DoRA", "lora_mid": "LoCon with a CP decomposition"}


def read_lora(path: str | Path, sdxl: bool) -> dict[str, torch.Tensor]:
    """A LoRA file as a kohya state dict for merge_lora_into: kohya / A1111 / sd-scripts files as
    they are, diffusers files (`unet.` / `text_encoder.` prefixed peft `lora_A` / `lora_B` keys, alpha
    from the adapter metadata diffusers writes) renamed; `sdxl` picks the text encoders' names.
    ValueError naming the file for anything else (LyCORIS LoHa/LoKr/(IA)^3/OFT/DoRA files are read by
    core.models.lycoris_net.read_lycoris)."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: only .safetensors LoRA files can be merged (a pickled .pt/.ckpt LoRA can "
                         "run code when opened)")
    if not path.is_file():
        raise ValueError(f"{path}: no such LoRA file")
    try:
        state_dict, metadata = load_lora_kohya(path)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable .safetensors file ({err})") from err
    if any(key.endswith(".lora_down.weight") for key in state_dict):
        return state_dict
    if any(key.endswith((".lora_A.weight", ".lora_B.weight")) for key in state_dict):
        return _diffusers_to_kohya(path, state_dict, metadata, sdxl)
    raise ValueError(f"{path}: not a LoRA file (no lora_down/lora_up or lora_A/lora_B weights)")


def _diffusers_to_kohya(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str],
                        sdxl: bool) -> dict[str, torch.Tensor]:
    import json

    adapter = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    prefixes = kohya_prefixes(sdxl)
    out = {}
    for key, value in state_dict.items():
        part, _, rest = key.partition(".")
        if part not in prefixes or ".lora_" not in rest:
            raise ValueError(f"{path}: unexpected key {key} in a diffusers LoRA file "
                             f"(expected {', '.join(p + '.' for p in prefixes)} prefixed lora_A / lora_B weights)")
        module, kind = rest.rsplit(".lora_", 1)
        name = kohya_name(prefixes[part], module)
        out[f"{name}.lora_{'down' if kind == 'A.weight' else 'up'}.weight"] = value
        if kind == "A.weight":
            pattern = adapter.get(f"{part}.alpha_pattern") or {}
            alpha = next((a for p, a in pattern.items() if module == p or module.endswith("." + p)),
                         adapter.get(f"{part}.lora_alpha", value.shape[0]))  # no metadata: alpha = rank
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def _kohya_modules(parts: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """kohya LoRA name -> the Linear/Conv2d it adapts (the base layer where peft wrapped one). U-Net
    modules are also found under their original-layout names (`lora_unet_input_blocks_4_1_...`),
    which sd-scripts uses for SDXL LoRAs."""
    modules = {}
    prefixes = kohya_prefixes("text_encoder_2" in parts)
    for part, model in parts.items():
        prefix_map = unet_prefix_map(model.config) if part == "unet" else None
        for name, module in model.named_modules():
            base = getattr(module, "base_layer", module)
            if isinstance(base, (nn.Linear, nn.Conv2d)) and "lora_" not in name and "base_layer" not in name:
                modules[kohya_name(prefixes[part], name)] = base
                original = original_key(prefix_map, name + ".weight") if prefix_map else None
                if original:
                    modules[kohya_name(prefixes[part], original.removesuffix(".weight"))] = base
    return modules


def _lora_groups(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name, _, part = key.partition(".")
        groups.setdefault(name, {})[part] = value
    broken = [name for name, g in groups.items() if not {"lora_down.weight", "lora_up.weight"} <= g.keys()]
    if broken:
        raise ValueError(f"LoRA modules without both lora_down and lora_up weights: {', '.join(broken)}")
    return groups


def lora_delta(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """`scale * up @ down`, shaped like the adapted weight (2-D Linear, 4-D Conv2d)."""
    delta = up.flatten(1).float() @ down.flatten(1).float()
    return scale * (delta if down.dim() == 2 else delta.reshape(up.shape[0], *down.shape[1:]))


@torch.no_grad()
def merge_lora_into(parts: dict[str, nn.Module], state_dict: dict[str, torch.Tensor],
                    multiplier: float = 1.0) -> list[str]:
    """Add `multiplier * alpha/rank * up @ down` of each kohya LoRA module to its base weight in
    `parts` (all of a model's parts: with "text_encoder_2" the SDXL names apply).

    Raises ValueError naming the keys that match no module (e.g. a text-encoder LoRA with no
    text encoder given, or an SDXL LoRA on an SD 1.5 model). Returns the merged kohya module names.
    """
    modules = _kohya_modules(parts)
    groups = _lora_groups(state_dict)
    unknown = sorted(name for name in groups if name not in modules)
    if unknown:
        raise ValueError(f"{len(unknown)} of {len(groups)} LoRA modules match no module of the model (a LoRA "
                         f"for another architecture?): {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}")
    for name, group in groups.items():
        down, up = group["lora_down.weight"], group["lora_up.weight"]
        alpha = float(group["alpha"]) if "alpha" in group else down.shape[0]
        weight = modules[name].weight
        delta = lora_delta(down, up, multiplier * alpha / down.shape[0])
        if delta.shape != weight.shape:
            raise ValueError(f"LoRA {name}: delta shape {tuple(delta.shape)} != weight shape {tuple(weight.shape)}")
        weight.add_(delta.to(weight.dtype))
    return sorted(groups)
