"""The trainer's LyCORIS settings (part of the "LoRA" section): with network_module "lycoris.kohya" the
adapter is a LyCORIS network (LoCon, LoHa, LoKr, (IA)^3, each optionally weight-decomposed: DoRA), made by
the LyCORIS library as sd-scripts makes it. kohya's names: `algo`, `conv_dim`, `conv_alpha`, `factor`,
`dora_wd` (network_args of sd-scripts, fields here), and `network_args` for the library's other options.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from core.config.block_weights import BLOCK_SETTINGS
from core.config.conditions import when
from core.config.schema import JobConfig, param

LYCORIS_MODULE = "lycoris.kohya"
LYCORIS = (when("train_lora", True), when("network_module", LYCORIS_MODULE))
ALGOS = ("locon", "loha", "lokr", "ia3")
RANKED = when("algo", "locon", "loha", "lokr")  # (IA)^3 has no rank, conv rank or weight decomposition
LYCORIS_PRESETS = ("full", "full-lin", "attn-mlp", "attn-only", "unet-only", "unet-transformer-only",
                   "unet-convblock-only", "ia3")  # the library's built-in presets (lycoris.config.PRESET)

# network_args of the library that have no field of their own: key -> (kind, what it does).
NETWORK_ARGS = {
    "preset": ("text", "the layers that get a module: a LyCORIS preset (" + ", ".join(LYCORIS_PRESETS)
               + ") or a preset .toml file; default full, ia3 for (IA)^3"),
    "rank_dropout": ("fraction", "dropout of each rank of the update"),
    "module_dropout": ("fraction", "probability that a module is skipped in a step"),
    "use_tucker": ("bool", "Tucker (CP) decomposition of conv layers (locon, loha)"),
    "use_scalar": ("bool", "a trained scalar on each module's update"),
    "train_norm": ("bool", "train the normalisation layers too"),
    "decompose_both": ("bool", "LoKr: low-rank decompose both Kronecker factors"),
    "full_matrix": ("bool", "LoKr: full-rank factors"),
    "unbalanced_factorization": ("bool", "LoKr: the larger factor first"),
    "wd_on_output": ("bool", "DoRA: decompose along the output dimension (default true)"),
    "rs_lora": ("bool", "rank-stabilised scale alpha / sqrt(rank)"),
    "bypass_mode": ("bool", "add the update to the layer's output instead of its weight"),
}
# kohya network_args that are fields here (or deprecated spellings): key -> what to use instead.
OWN_FIELDS = {"algo": "algo", "conv_dim": "conv_dim", "conv_alpha": "conv_alpha", "factor": "factor",
              "dora_wd": "dora_wd", "dropout": "network_dropout", "use_cp": "use_tucker in network_args",
              "use_conv_cp": "use_tucker in network_args", "disable_conv_cp": "use_tucker in network_args"}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_network_args(items: list[str]) -> dict[str, object]:
    """sd-scripts' network_args ("key=value" each) as typed values; ValueError names the item and says
    what is expected."""
    parsed: dict[str, object] = {}
    for item in items:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(f"{item!r} is not key=value (e.g. rank_dropout=0.1)")
        if key in OWN_FIELDS:
            raise ValueError(f"{key} has its own setting here: set {OWN_FIELDS[key]} instead of network_args")
        if key not in NETWORK_ARGS:
            raise ValueError(f"unknown LyCORIS argument {key!r}; known: {', '.join(NETWORK_ARGS)}")
        if key in parsed:
            raise ValueError(f"{key} is given twice")
        parsed[key] = _typed(key, text)
    return parsed


def _typed(key: str, text: str) -> object:
    kind = NETWORK_ARGS[key][0]
    if kind == "bool":
        if text.lower() not in TRUE + FALSE:
            raise ValueError(f"{key}={text}: expected true or false")
        return text.lower() in TRUE
    if kind == "fraction":
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value < 1:
            raise ValueError(f"{key}={text}: expected a number from 0 to below 1")
        return value
    if text in LYCORIS_PRESETS:
        return text
    if not text.lower().endswith(".toml"):
        raise ValueError(f"preset={text}: expected one of {', '.join(LYCORIS_PRESETS)} or a preset .toml file")
    if not Path(text).expanduser().is_file():
        raise ValueError(f"preset={text}: no such preset file")
    return str(Path(text).expanduser())


def unsupported_args(algo: str, names: list[str]) -> list[str]:
    """Those of `names` (network_args) that the LyCORIS library's algorithm table says `algo`
    does not take (names the table does not know are left to the library)."""
    from lycoris.config_sdk import ALGO_REGISTRY

    known = {arg for spec in ALGO_REGISTRY.values() for arg in spec.supported_args}
    supported = ALGO_REGISTRY[algo].supported_args
    return [name for name in names if name in known - set(supported)]


class LycorisSettings(JobConfig):
    """Network type; algorithm, conv rank and alpha, LoKr factor, DoRA and further arguments of a LyCORIS
    network."""
    network_module: Literal["networks.lora", "lycoris.kohya"] = param(
        "networks.lora", "The adapter trained (kohya's network_module): networks.lora: LoRA (kohya file, or "
        "diffusers); lycoris.kohya: a LyCORIS network (LoCon, LoHa, LoKr, (IA)^3, DoRA) made and saved by the "
        "LyCORIS library, in the file layout AUTOMATIC1111, Forge and ComfyUI load.", label="Network type",
        group="LoRA", applies=when("train_lora", True))
    algo: Literal["locon", "loha", "lokr", "ia3"] = param(
        "locon", "LyCORIS algorithm (kohya's network_args algo=): locon: LoRA on linear and conv layers (LoCon); "
        "loha: Hadamard product of two low-rank pairs (LoHa); lokr: Kronecker product (LoKr, small files); "
        "ia3: learned scaling of the attention and MLP activations ((IA)^3, tiny files, higher learning rates).",
        label="LyCORIS algorithm", group="LoRA", applies=LYCORIS)
    conv_dim: int | None = param(
        None, "Rank of the conv layers' modules (network_args conv_dim=); empty: the LoRA rank.",
        label="Conv rank", group="LoRA", applies=(*LYCORIS, RANKED), ge=1, le=1024)
    conv_alpha: float | None = param(
        None, "Alpha of the conv layers' modules (network_args conv_alpha=); empty: the LoRA alpha.",
        label="Conv alpha", group="LoRA", applies=(*LYCORIS, RANKED), gt=0)
    factor: int = param(
        -1, "LoKr: the Kronecker factor (network_args factor=); -1: as balanced as the layer allows. Larger: "
        "a smaller file.", label="LoKr factor", group="LoRA", applies=(*LYCORIS, when("algo", "lokr")), ge=-1)
    dora_wd: bool = param(
        False, "DoRA: weight-decomposed updates (network_args dora_wd=True): the magnitude of each weight "
        "column is trained apart from its direction; slower, often closer to a full fine-tune.",
        label="DoRA (weight decomposition)", group="LoRA", applies=(*LYCORIS, RANKED))
    network_args: list[str] = param(
        [], "Further LyCORIS arguments as key=value, one per line, as sd-scripts' network_args: "
        + "; ".join(f"{key}: {text}" for key, (_, text) in NETWORK_ARGS.items()) + ".",
        label="LyCORIS arguments", group="LoRA", advanced=True, applies=LYCORIS)

    @field_validator("network_args")
    @classmethod
    def _known_args(cls, value: list[str]) -> list[str]:
        items = [v.strip() for v in value if v.strip()]
        parse_network_args(items)
        return items

    @field_validator("factor")
    @classmethod
    def _factor(cls, value: int) -> int:
        if value == 0:
            raise ValueError("factor 0 is no Kronecker factor: give -1 (automatic) or a number from 1")
        return value

    @model_validator(mode="after")
    def _args_of_the_algorithm(self):
        if not (getattr(self, "train_lora", True) and self.network_module == LYCORIS_MODULE):
            return self
        if blocks := [name for name in BLOCK_SETTINGS if getattr(self, name, None)]:
            raise ValueError(f"{', '.join(blocks)}: block weights and dims apply to network_module networks.lora, "
                             "not to a LyCORIS network; clear them or train a LoRA")
        used = [key for key, value in parse_network_args(self.network_args).items() if value]
        if wrong := unsupported_args(self.algo, used):
            raise ValueError(f"network_args: {', '.join(wrong)} cannot be used with algo {self.algo} (the LyCORIS "
                             "library's algorithm table)")
        return self


# kohya_ss GUI: its LoRA_type choices that are LyCORIS networks, and its form's LyCORIS options.
KOHYA_SS_ALGOS = {"LyCORIS/LoCon": "locon", "LyCORIS/LoHa": "loha", "LyCORIS/LoKr": "lokr", "LyCORIS/iA3": "ia3"}
KOHYA_SS_ARGS = {"LyCORIS_preset": "preset", **{key: key for key in NETWORK_ARGS if key != "preset"}}


def kohya_network_pairs(pairs: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """kohya's network settings as (our field, value) pairs for the kohya import, once the network_args items
    that are fields here (algo, conv_dim, conv_alpha, factor, dora_wd, block settings) are pairs of their own
    (kohya_import._network_args): sd-scripts' network_module turns train_lora on; the library's algo lora
    is its LoCon; of the other network_args, dropout is network_dropout, older LyCORIS names are renamed, the
    LyCORIS arguments stay in network_args and the rest become pairs of their own (listed as unknown);
    kohya_ss's LoRA_type "LyCORIS/..." gives the network with the LyCORIS options its form sets."""
    lycoris_form = any(key == "LoRA_type" and value in KOHYA_SS_ALGOS for key, value in pairs)
    out, extra = [], []
    for key, value in pairs:
        if key == "network_args" and isinstance(value, list):
            for item in value:
                name, eq, text = (part.strip() for part in str(item).partition("="))
                name = DEPRECATED.get(name, name)
                if name in NETWORK_ARGS:
                    extra.append(f"{name}={text}")
                elif not eq:  # not key=value: left in network_args, whose check reports it
                    out.append(("network_args", [item]))
                else:
                    out.append(("network_dropout" if name == "dropout" else name, text))
        elif key == "algo" and str(value).strip().lower() == "lora":
            out.append(("algo", "locon"))  # the library's lora is its LoCon module
        elif key == "LoRA_type" and value in KOHYA_SS_ALGOS:
            out += [("train_lora", True), ("network_module", LYCORIS_MODULE), ("algo", KOHYA_SS_ALGOS[value])]
        elif lycoris_form and key in KOHYA_SS_ARGS:
            if str(value).strip().lower() not in ("", "0", "0.0", "false", "none", "full"):  # the form's defaults
                extra.append(f"{KOHYA_SS_ARGS[key]}={value}")
        else:
            out.append((key, value))
            if key == "network_module" and value in ("networks.lora", LYCORIS_MODULE):
                out.append(("train_lora", True))
    return out + ([("network_args", extra)] if extra else [])


DEPRECATED = {"use_cp": "use_tucker", "use_conv_cp": "use_tucker"}  # older LyCORIS names of network_args
