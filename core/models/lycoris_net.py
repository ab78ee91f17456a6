"""LyCORIS networks (LoCon, LoHa, LoKr, (IA)^3, each optionally DoRA) over an SD model: made, saved, loaded
and merged by the LyCORIS library (lycoris-lora), as sd-scripts' `network_module=lycoris.kohya` does.

A model's parts are given as a dict, as in core.models.lora: "unet", "text_encoder" and, for SDXL,
"text_encoder_2". Module names are the library's kohya ones (`lora_unet_<diffusers module name>`,
`lora_te_` / `lora_te1_` / `lora_te2_` for the text encoders, with transformers 4's `text_model.` root that
AUTOMATIC1111, Forge and ComfyUI expect), and files are written by the library's own `save_weights`: the
layout those programs load (`.lora_down/.lora_up`, `.hada_w1_a`..., `.lokr_w1`..., `.weight/.on_input`,
`.dora_scale`, `.alpha`).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from core.fsutil import atomic_path
from core.models.lora import LYCORIS_MARKS, _kohya_modules, kohya_prefixes, load_lora_kohya
from core.models.single_file import saved_bytes

ATTRIBUTE = "lycoris"  # each adapted part holds its modules here (a ModuleDict), so they move, save and sync with it
LYCORIS_KEYS = {*LYCORIS_MARKS, "on_input"}  # tensor names only LyCORIS files have ((IA)^3: weight + on_input)
LIBRARY_NAMES = {"wd_on_output": "wd_on_out"}  # network_args whose keyword differs in LycorisNetworkKohya
NO_TARGETS = {"enable_conv": True, "unet_target_module": [], "unet_target_name": [],
              "text_encoder_target_module": [], "text_encoder_target_name": [], "module_algo_map": {},
              "name_algo_map": {}, "use_fnmatch": False, "exclude_name": []}


class _TextModelRoot(nn.Module):
    """A CLIPTextModel seen from transformers 4's `text_model.` root (which transformers 5 dropped), so the
    library names its modules `lora_te_text_model_encoder_...` as the programs that load LoRAs expect."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_model = text_encoder


def text_encoder_arg(parts: dict[str, nn.Module]):
    """The library's text_encoder argument: one module (SD 1/2: `lora_te_`), a list of two (SDXL: `lora_te1_`,
    `lora_te2_`), or None."""
    roots = [te if hasattr(te, "text_model") else _TextModelRoot(te)
             for te in (parts.get("text_encoder"), parts.get("text_encoder_2")) if te is not None]
    if not roots:
        return None
    return roots if "text_encoder_2" in parts else roots[0]


def _preset(name: str) -> dict:
    """A built-in LyCORIS preset or a preset .toml file, with every key set (the library keeps the previous
    preset's maps in class attributes otherwise)."""
    from lycoris.config import PRESET
    from lycoris.utils.preset import read_preset

    if name in PRESET:
        preset = _anywhere(PRESET[name])
    elif (preset := read_preset(name)) is None:
        raise ValueError(f"preset={name}: not a readable LyCORIS preset file")
    preset = {**NO_TARGETS, **preset}
    if any("time_embedding" in n for n in preset["unet_target_name"]):
        # diffusers' time embedding is a TimestepEmbedding, a class the presets also target (for other
        # models): its linears would get a module by class and by name, which the library refuses.
        preset["unet_target_module"] = [m for m in preset["unet_target_module"] if m != "TimestepEmbedding"]
    return preset


def _anywhere(preset: dict) -> dict:
    """A built-in preset whose layer names (`to_k`, `mlp.fc2`, ...) match at any depth: the library matches
    them from the start of the module path, where only top-level layers (`conv_in`) would."""
    def pattern(name: str) -> str:
        return rf"(.*\.)?{re.escape(name)}$"

    names = {key: [pattern(n) for n in preset.get(key, [])] for key in ("unet_target_name", "text_encoder_target_name")}
    return {**preset, **names, "name_algo_map": {pattern(n): c for n, c in preset.get("name_algo_map", {}).items()}}


def create_network(parts: dict[str, nn.Module], algo: str, rank: int, alpha: float, *, conv_dim: int | None = None,
                   conv_alpha: float | None = None, dropout: float = 0.0, factor: int = -1, dora_wd: bool = False,
                   args: dict | None = None):
    """A LycorisNetworkKohya over the U-Net and the text encoders among `parts` (all of a model's text
    encoders, for the names; apply_network picks those trained). `args`: parsed network_args
    (core.config.lycoris.parse_network_args); `preset` defaults to the library's full, ia3 for (IA)^3."""
    from lycoris.kohya import LycorisNetworkKohya

    options = dict(args or {})
    LycorisNetworkKohya.apply_preset(_preset(options.pop("preset", "ia3" if algo == "ia3" else "full")))
    return LycorisNetworkKohya(
        text_encoder_arg(parts), parts["unet"], multiplier=1.0, lora_dim=rank, conv_lora_dim=conv_dim or rank,
        alpha=alpha, conv_alpha=conv_alpha or alpha, dropout=dropout, network_module=algo, factor=factor,
        weight_decompose=dora_wd, warn_on_unmatched=False,
        **{LIBRARY_NAMES.get(key, key): value for key, value in options.items()})


def part_of(lora_name: str, sdxl: bool) -> str:
    """The part a module of the network adapts, from its kohya name."""
    return next(part for part, prefix in kohya_prefixes(sdxl).items() if lora_name.startswith(prefix))


def apply_network(network, parts: dict[str, nn.Module], sdxl: bool) -> dict[str, list[nn.Module]]:
    """Hook the network's modules of `parts` (the U-Net and the trained text encoders) into the layers they
    adapt (the library's apply_to; the others are dropped) and register them under each part's `lycoris`
    attribute. Returns the modules by part."""
    network.text_encoder_loras = [m for m in network.text_encoder_loras if part_of(m.lora_name, sdxl) in parts]
    network.apply_to(None, None, apply_text_encoder=bool(network.text_encoder_loras), apply_unet="unet" in parts)
    by_part: dict[str, list[nn.Module]] = {}
    for module in network.loras:
        by_part.setdefault(part_of(module.lora_name, sdxl), []).append(module)
    for part, modules in by_part.items():
        parts[part].add_module(ATTRIBUTE, nn.ModuleDict({m.lora_name: m for m in modules}))
    return by_part


def save_network(path: str | Path, network, metadata: dict[str, str]) -> Path:
    """Write the network with the library's save_weights (its tensors as they are, `metadata` and the
    library's model hash) to one .safetensors file, atomically."""
    path = Path(path)
    with atomic_path(path, saved_bytes(network.state_dict().values())) as tmp:
        named = tmp.with_name(tmp.name + ".safetensors")  # the library picks the format by the suffix
        try:
            network.save_weights(str(named), None, dict(metadata))
            named.replace(tmp)
        finally:
            named.unlink(missing_ok=True)
    return path


def read_lycoris(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a .safetensors file that only the LyCORIS library merges (LoHa, LoKr, (IA)^3, OFT,
    DoRA, CP-decomposed LoCon); None for anything else (core.models.lora.read_lora says what it is)."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    try:
        state_dict, _ = load_lora_kohya(path)
    except Exception:  # safetensors raises its own error types; read_lora reports them
        return None
    return state_dict if any(set(key.split(".")[1:]) & LYCORIS_KEYS for key in state_dict) else None


def load_modules(parts: dict[str, nn.Module], state_dict: dict[str, torch.Tensor],
                 multiplier: float = 1.0) -> list[nn.Module]:
    """The modules of a LyCORIS state dict over the layers of `parts` (all of a model's parts), each rebuilt
    by the library (get_module / make_module, as its create_network_from_weights does); U-Net names in
    diffusers' or the original layout (sd-scripts' SDXL files). ValueError naming the modules that match no
    layer or that the library cannot rebuild."""
    from lycoris.modules import IA3Module, get_module, make_module

    layers = _kohya_modules(parts)
    names = sorted({key.split(".")[0] for key in state_dict if "." in key})
    unknown = [name for name in names if name not in layers]
    if unknown:
        raise ValueError(f"{len(unknown)} of {len(names)} LyCORIS modules match no module of the model (a network "
                         f"for another architecture?): {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}")
    modules = []
    for name in names:
        kind, params = get_module(state_dict, name)
        if kind is IA3Module:
            module = _ia3_module(name, layers[name], *params)
        else:
            module = make_module(kind, params, name, layers[name]) if kind is not None else None
        if module is None:
            tensors = sorted(key.split(".", 1)[1] for key in state_dict if key.startswith(name + "."))
            raise ValueError(f"{name}: the LyCORIS library cannot rebuild this module from its tensors "
                             f"({', '.join(tensors)})")
        module.multiplier = multiplier
        modules.append(module)
    return modules


def _ia3_module(name: str, layer: nn.Module, weight: torch.Tensor, on_input: torch.Tensor | None):
    """lycoris-lora 4.1.3's IA3Module.make_module_from_state_dict takes no on_input (get_module gives it), so
    its own loader fails on (IA)^3 files: the module is made as that function makes it, with on_input."""
    from lycoris.modules import IA3Module

    module = IA3Module(name, layer, 1, train_on_input=bool(on_input is not None and on_input.item()))
    module.weight.data.copy_(weight)
    return module


@torch.no_grad()
def merge_lycoris_into(parts: dict[str, nn.Module], state_dict: dict[str, torch.Tensor],
                       multiplier: float = 1.0) -> list[str]:
    """Merge a LyCORIS network into the weights of `parts` at `multiplier` with the library's own merge
    (each module's merge_to). Returns the merged module names."""
    modules = load_modules(parts, state_dict, multiplier)
    for module in modules:
        with _scaled_once(module):
            module.merge_to(multiplier)
    return sorted(m.lora_name for m in modules)


@contextmanager
def _scaled_once(module):
    """lycoris-lora 4.1.3: LoHa's and LoKr's get_diff_weight (merge_to's) multiplies by alpha / rank although
    their get_weight already did, so the merged weights differ from what the forward pass, AUTOMATIC1111 and
    ComfyUI use; get_weight leaves the scale to get_diff_weight while this holds. (tests/test_train_lycoris.py
    compares a merge with the forward pass, so a library that fixes it shows.)"""
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    if not isinstance(module, (LohaModule, LokrModule)):
        yield
        return
    scale = module.scale
    get_weight = module.get_weight
    module.get_weight = lambda shape: _with_scale(module, 1.0, get_weight, shape)
    try:
        yield
    finally:
        module.__dict__.pop("get_weight", None)
        module.scale = scale


def _with_scale(module, scale: float, get_weight, shape):
    kept, module.scale = module.scale, scale
    try:
        return get_weight(shape)
    finally:
        module.scale = kept
