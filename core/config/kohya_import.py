"""Import a kohya_ss GUI config (.json) or a kohya sd-scripts config (.toml) as trainer values.

Most kohya names are ours already and pass with their type converted (kohya_ss stores numbers
as strings and "" for unset); RULES renames or converts the others. What we do not support is
listed in `unknown` for the user to see, and every conversion is explained in `notes`; so is every
value we cannot take (a wrong type, out of bounds) and why. A file we cannot read at all is a ConfigError.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

from pydantic import TypeAdapter, ValidationError

from core.config import ConfigError, TrainConfig, parse_resolution, validate_partial
from core.config.dataset_toml import read_dataset_config
from core.config.lycoris import kohya_network_pairs


@dataclass
class KohyaImport:
    values: dict = field(default_factory=dict)  # TrainConfig fields, typed and checked one by one
    unknown: list[str] = field(default_factory=list)  # "key=value" (shortened) not imported, sorted
    notes: list[str] = field(default_factory=list)  # the conversions made, in words


@dataclass(frozen=True)
class Rule:
    """A kohya key that becomes our field `target` through `convert`; `unit` says what the kohya
    value counts, and `hint` what the user should know, for the note."""
    target: str
    convert: Callable[[Any], Any] = lambda value: value
    unit: str = ""
    hint: str = ""


# Converters take any JSON or TOML value; one they cannot take is a ValueError that says what they expected.
# A list they return is checked item by item as the field's type.
def _folders(value: Any) -> list:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    raise ValueError("expected a folder or a list of folders")


def _resolution(value: Any) -> str:
    if isinstance(value, list) and len(value) == 2 and all(type(side) is int for side in value):
        value = ",".join(map(str, value))  # [width, height]
    if type(value) not in (str, int):
        raise ValueError("expected WIDTH,HEIGHT text or [WIDTH, HEIGHT]")
    return "{},{}".format(*parse_resolution(value))


def _fraction(percent: Any) -> float:
    number = _number(percent)
    if number is None or not 0 <= number < 100:
        raise ValueError("expected a percentage from 0 to 99")
    return number / 100


def _optimizer_args(value: Any) -> list:
    """kohya_ss: "weight_decay=0.01 betas=0.9,0.99"; sd-scripts: a list of key=value."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return value
    raise ValueError("expected key=value text or a list of them")


def _renamed(names: dict[str, str]) -> Callable[[Any], Any]:
    """A converter for kohya choices that have another name here (the others pass unchanged)."""
    return lambda value: names.get(value.strip().lower(), value) if isinstance(value, str) else value


def _prompt_file(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected the path of a prompt file")
    if not value.strip().lower().endswith((".txt", ".toml", ".json")):
        raise ValueError("kohya_ss keeps the prompts themselves; save them to a .txt file and choose it")
    return value


def _text_encoder_rate(value: Any) -> Any:
    """kohya's text encoder rate 0 is imported as it read before schema version 2: same as
    learning_rate, which is now empty (our 0 keeps the text encoder frozen)."""
    return None if _is_zero(value) else value


def _network_module(value: Any) -> str:
    if not isinstance(value, str) or value.strip() not in ("networks.lora", "lycoris.kohya"):
        raise ValueError("only networks.lora (LoRA) and lycoris.kohya (LyCORIS) are supported here, not other "
                         "network modules")
    return value.strip()


def _dataset_subsets(value: Any) -> list:
    """sd-scripts' dataset_config: the subsets of the TOML it names, read now (so they can be edited)."""
    if not isinstance(value, str):
        raise ValueError("expected the path of a dataset config .toml")
    try:
        found = read_dataset_config(value)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    return [subset.model_dump(exclude_none=True) for subset in found.subsets]


RULES: dict[str, Rule] = {
    "dataset_config": Rule("subsets", _dataset_subsets, hint=" (its subsets, in the subsets table; train_data_dir "
                           "is not used with them, as in sd-scripts; a batch_size in the file is not imported)"),
    "network_module": Rule("network_module", _network_module),
    "train_data_dir": Rule("train_data_dir", _folders),
    "image_folder": Rule("train_data_dir", _folders),  # kohya_ss fine-tune tab
    "resolution": Rule("max_resolution", _resolution),
    "max_resolution": Rule("max_resolution", _resolution),
    "epoch": Rule("max_train_epochs"),
    "lr_warmup": Rule("lr_warmup_steps", _fraction, " (% of the run)"),
    "optimizer": Rule("optimizer_type"),
    "optimizer_args": Rule("optimizer_args", _optimizer_args),
    "text_encoder_lr": Rule("learning_rate_te", _text_encoder_rate),
    "learning_rate_te": Rule("learning_rate_te", _text_encoder_rate),
    "save_precision": Rule("save_precision", _renamed({"float": "fp32"})),
    "save_model_as": Rule("save_model_as", _renamed({"ckpt": "safetensors", "diffusers_safetensors": "diffusers"})),
    "sdxl_no_half_vae": Rule("no_half_vae"),
    "sdxl_cache_text_encoder_outputs": Rule("cache_text_encoder_outputs"),
    "reg_data_dir": Rule("class_data_dir", hint=" (set class_prompt, the caption of class images without a caption "
                         "file; when the folder holds fewer than num_class_images, the missing ones are generated "
                         "into it)"),
}
# kohya_ss GUI files count this in percent of the run (sd-scripts: steps) and hold the prompts inline.
GUI_RULES: dict[str, Rule] = {
    "stop_text_encoder_training": Rule("stop_text_encoder_training", _fraction, " (% of the run)"),
    "sample_prompts": Rule("sample_prompts", _prompt_file),
}

# Understood but not needed here: key -> (the setting that gets the note, None: any; the note).
IGNORED: dict[str, tuple[bool | None, str]] = {
    "xformers": (True, "xformers: ignored (used automatically when installed, else PyTorch SDPA)"),
    "sdpa": (True, "sdpa: ignored (PyTorch SDPA is used when xformers is not installed)"),
    "mem_eff_attn": (True, "mem_eff_attn: ignored (xformers or PyTorch SDPA is used)"),
    "cache_latents_to_disk": (None, "cache_latents_to_disk: ignored (the latent cache is always on disk)"),
    "enable_bucket": (False, "enable_bucket off: ignored (images are always bucketed by aspect ratio)"),
    "v2": (True, "v2: ignored (SD 2.x is detected from the model)"),
    "sdxl": (True, "sdxl: ignored (the model type is detected from the checkpoint)"),
    "sdxl_checkbox": (True, "sdxl_checkbox: ignored (the model type is detected from the checkpoint)"),
}

# Features that come later: (key prefixes, key names, the note given once); their keys are unknown.
LATER: tuple[tuple[tuple[str, ...], frozenset[str], str], ...] = (
    (("network_", "lora_", "lycoris_", "conv_"),
     frozenset({"unet_lr", "dim_from_weights", "factor", "use_cp", "use_tucker", "use_scalar", "rank_dropout",
                "rank_dropout_scale", "module_dropout", "decompose_both", "train_norm",
                "train_on_input", "dora_wd", "bypass_mode", "constrain", "rescaled", "unit", "scale_weight_norms"}),
     "LoRA settings not supported here are not imported (LyCORIS, conv settings, separate U-Net lr)"),
    ((), frozenset({"no_token_padding"}),
     "no_token_padding is not supported: captions are always padded to max_token_length"),
)

# kohya_ss keeps both kinds of noise settings and uses those its noise_offset_type picks.
UNUSED_NOISE = {"original": ("multires_noise_iterations", "multires_noise_discount"),
                "multires": ("noise_offset", "noise_offset_random_strength", "adaptive_noise_scale")}

SECRET_ENDINGS = ("_key", "_token", "password")  # listed as unknown without their value

# Lists and tables inside one another, counting the config (with the tables of an sd-scripts file) as the
# first level: kohya configs need 2 or 3; a deeper file is no config, and would overflow the parsers' stack.
MAX_DEPTH = 16


def read_kohya_config(path: str | Path) -> KohyaImport:
    """Import a kohya_ss GUI .json or an sd-scripts .toml; ConfigError names the file and the problem."""
    path = Path(path)
    toml = path.suffix.lower() == ".toml"
    if not toml and path.suffix.lower() != ".json":
        raise ConfigError(f"{path}: not a kohya config (expected a kohya_ss .json or an sd-scripts .toml)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    try:
        data = tomllib.loads(text) if toml else json.loads(text, object_pairs_hook=_JsonObject)
    except RecursionError:
        raise _too_deep(path) from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except ValueError as err:  # invalid TOML, or a number too long to read
        raise ConfigError(f"{path}: invalid {'TOML' if toml else 'JSON'}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of settings, found a {type(data).__name__}")
    return import_kohya_values(_flatten(data) if toml else data.pairs, gui=not toml, source=str(path))


class _JsonObject(dict):
    """A JSON object that keeps its (key, value) pairs too: a hand-edited file may give a key twice."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__(pairs)
        self.pairs = pairs


def _flatten(table: dict) -> list[tuple[str, Any]]:
    """The pairs of the top level and of one level of tables ([model_arguments], ... as sd-scripts'
    --output_config writes); a key may come in several tables."""
    return [pair for key, value in table.items()
            for pair in (value.items() if isinstance(value, dict) else [(key, value)])]


def _too_deep(source: str | Path) -> ConfigError:
    return ConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep (not a kohya config)")


def _check_depth(values: list, source: str) -> None:
    """`values` are those of a config (the first level): ConfigError when they nest past MAX_DEPTH."""
    depth, level = 1, [value for value in values if isinstance(value, (list, dict))]
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise _too_deep(source)
        level = [child for value in level for child in (value.values() if isinstance(value, dict) else value)
                 if isinstance(child, (list, dict))]


def import_kohya_values(raw: dict | list[tuple[str, Any]], gui: bool = True,
                        source: str = "kohya config") -> KohyaImport:
    """Map kohya settings (a dict, or (key, value) pairs where a key may repeat) to TrainConfig values.
    `gui`: they come from a kohya_ss GUI file (percentages of the run, inline sample prompts) rather than
    sd-scripts (steps, a prompt file). ConfigError, naming `source`, only when they nest too deep."""
    pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
    _check_depth([value for _, value in pairs], source)
    pairs = kohya_network_pairs(_network_args(pairs))
    rules = RULES | GUI_RULES if gui else RULES
    result = KohyaImport()
    found: dict[str, list[tuple[str, Any, Any, Rule]]] = {}  # target -> [(key, raw, typed, rule)]
    rejected: set[str] = set()
    for key, value in _active_noise(pairs):
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # kohya_ss writes "" for unset
        rule = rules.get(key, Rule(key))
        if rule.target not in TrainConfig.model_fields:
            _set_aside(key, value, result)
            continue
        try:
            typed = _typed(rule.target, rule.convert(value))
        except ValueError as err:
            if not _is_zero(value):  # else kohya's 0 for "default" where ours must be at least 1
                result.unknown.append(_entry(key, value))
                result.notes.append(f"{key} {_short(value)}: not imported ({err})")
                rejected.add(rule.target)
            continue
        found.setdefault(rule.target, []).append((key, value, typed, rule))
    if "optimizer_type" in rejected and "optimizer_type" not in found and "optimizer_args" in found:
        result.unknown += [_entry(key, value) for key, value, _, _ in found.pop("optimizer_args")]
        result.notes.append("optimizer_args: not imported (they belong to the optimizer that was not)")
    for target, candidates in found.items():
        _choose(target, candidates, result)
    _alpha_mask_means_masked_loss(result)
    result.unknown.sort()
    return result


def _alpha_mask_means_masked_loss(result: KohyaImport) -> None:
    """sd-scripts masks the loss whenever the images bring alpha masks, masked_loss or not; here masked_loss
    is the switch and alpha_mask the mask's source."""
    if result.values.get("alpha_mask") and not result.values.get("masked_loss"):
        result.values["masked_loss"] = True
        result.notes.append("alpha_mask on -> masked_loss on (sd-scripts weights the loss by the alpha channel "
                            "whenever alpha_mask is on)")


def _network_args(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """sd-scripts' `network_args` ("key=value" items, a list or one space-separated text): the items whose
    key is a field here (down_lr_weight, block_dims, ...) become pairs of their own in its place; the
    others stay in network_args."""
    out = []
    for key, value in pairs:
        items = value.split() if isinstance(value, str) else value
        if key != "network_args" or not isinstance(items, list):
            out.append((key, value))
            continue
        rest = []
        for item in items:
            name, eq, text = item.partition("=") if isinstance(item, str) else ("", "", "")
            if eq and name.strip() in TrainConfig.model_fields:
                out.append((name.strip(), text.strip()))
            else:
                rest.append(item)
        if rest:
            out.append((key, rest))
    return out


def _set_aside(key: str, value: Any, result: KohyaImport) -> None:
    """A key that is no field of ours: a note when it is understood, else listed as unknown."""
    if key in IGNORED:
        when, note = IGNORED[key]
        if (when is None or _is_on(value) == when) and note not in result.notes:
            result.notes.append(note)
        return
    result.unknown.append(_entry(key, value))
    later = next((note for prefixes, names, note in LATER if key in names or key.lower().startswith(prefixes)), None)
    if later and later not in result.notes:
        result.notes.append(later)


def _choose(target: str, candidates: list, result: KohyaImport) -> None:
    """Several kohya keys may give one field (epoch, max_train_epochs), one key several tables of an
    sd-scripts file: a set value beats 0, then our own name beats an alias, then the later value beats
    the earlier (as sd-scripts reads its tables)."""
    chosen = max(range(len(candidates)), key=lambda i: (bool(candidates[i][2]), candidates[i][0] == target, i))
    key, raw, value, rule = candidates[chosen]
    result.values[target] = value
    if key != target or rule.unit:
        result.notes.append(f"{key} {_short(raw)}{rule.unit} -> {target} {_short(value)}{rule.hint}")
    elif isinstance(raw, str) and isinstance(value, str) and raw.strip() != value:
        result.notes.append(f"{key} {_short(raw)} -> {_short(value)}")
    for other, other_raw, other_value, _ in candidates[:chosen] + candidates[chosen + 1:]:
        if other_value and other_value != value:
            result.notes.append(f"{other} {_short(other_raw)}: ignored ({key} {_short(raw)} is used)")


@lru_cache(maxsize=None)
def _adapter(name: str) -> TypeAdapter:
    return TypeAdapter(TrainConfig.model_fields[name].annotation)


def _typed(name: str, value: Any) -> Any:
    """`value` as our field `name` takes it (choices match case-insensitively), checked against
    the field's bounds and validators; ValueError says why not."""
    annotation = TrainConfig.model_fields[name].annotation
    if get_origin(annotation) is Literal:
        text = str(value).strip().lower()
        value = next((choice for choice in get_args(annotation) if str(choice).lower() == text), value)
    try:
        typed = _adapter(name).validate_python(value)
        validate_partial(TrainConfig, {name: typed}, name)
    except ValidationError as err:
        raise ValueError(err.errors()[0]["msg"]) from None
    except ConfigError as err:  # "name: field 'name': problem (got value)"
        raise ValueError(str(err).split(": ", 2)[-1]) from None
    given, read = (value, typed) if isinstance(value, list) and isinstance(typed, list) else ([value], [typed])
    if any(isinstance(item, bool) and not isinstance(number, bool) for item, number in zip(given, read)):
        raise ValueError("expected a number, not true/false")  # pydantic reads true as 1
    return typed


def _active_noise(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    kinds = [str(value).lower() for key, value in pairs if key == "noise_offset_type"]
    unused = next((UNUSED_NOISE[kind] for kind in reversed(kinds) if kind in UNUSED_NOISE), None)
    if unused is None:
        return pairs
    return [(key, value) for key, value in pairs if key not in unused and key != "noise_offset_type"]


def _is_on(value: Any) -> bool:
    return str(value).strip().lower() not in ("", "false", "no", "none", "off", "0", "0.0")


def _number(value: Any) -> float | None:
    """A kohya number (kohya_ss writes them as text); None for anything else (true/false included)."""
    if type(value) not in (int, float, str):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


def _is_zero(value: Any) -> bool:
    return _number(value) == 0


def _short(value: Any, limit: int = 40) -> str:
    if value is None:
        return "empty"
    text = " ".join((value if isinstance(value, str) else json.dumps(value, default=str)).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _entry(key: str, value: Any) -> str:
    return key if key.lower().endswith(SECRET_ENDINGS) else f"{key}={_short(value)}"
