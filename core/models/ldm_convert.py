"""Diffusers state dicts -> one state dict in the original Stable Diffusion key layout.

The original layout (CompVis LDM for SD 1.x/2.x, Stability's SGM for SDXL) is what AUTOMATIC1111
and ComfyUI load. Block counts, layers per block and attention placement are read from the
diffusers model configs, so the same code converts tiny test models and real-size ones.

Each component is converted through a prefix map: a diffusers module prefix
(`down_blocks.1.resnets.0.`) maps to an original prefix (`input_blocks.4.0.`) plus renames of
the parameter names below it. A key no rule covers, or two keys landing on one name, is an error:
a conversion is never silently partial.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

Tensor = torch.Tensor

FAMILIES = {"sd1": "sd1", "sd2": "sd2", "sd2v": "sd2", "sdxl": "sdxl"}
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {
    "sd1": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}
# diffusers' SD 2.x text encoder keeps 23 of OpenCLIP ViT-H's 24 layers (SD 2 uses the
# penultimate one); the original file has all 24, so the last kept layer is repeated as a stand-in.
SD2_DIFFUSERS_TEXT_LAYERS = 23

UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
               ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
               ("conv_shortcut", "skip_connection"))
VAE_RESNET = (("conv_shortcut", "nin_shortcut"),)
VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                 ("to_out.0", "proj_out"))
LINEAR_PAIR = (("linear_1", "0"), ("linear_2", "2"))


@dataclass(frozen=True)
class Rule:
    """Where the parameters under one diffusers prefix go in the original layout."""
    target: str
    renames: tuple[tuple[str, str], ...] = ()
    reshape: Callable[[Tensor], Tensor] | None = None


@dataclass
class PrefixMap:
    rules: dict[str, Rule] = field(default_factory=dict)

    def add(self, source: str, target: str, renames=(), reshape=None) -> None:
        self.rules[source] = Rule(target, tuple(renames), reshape)

    def find(self, key: str) -> tuple[Rule, str] | None:
        """The longest rule prefix of `key` and the rest of the key after it."""
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            rule = self.rules.get(".".join(parts[:n]) + ".")
            if rule is not None:
                return rule, ".".join(parts[n:])
        return None


def _rename(rest: str, renames) -> str:
    for old, new in renames:
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def original_key(prefix_map: PrefixMap, key: str) -> str | None:
    """The original-layout name of a diffusers parameter `key` (None when no rule covers it)."""
    found = prefix_map.find(key)
    if found is None:
        return None
    rule, rest = found
    return rule.target + _rename(rest, rule.renames)


def apply_prefix_map(state_dict: Mapping[str, Tensor], prefix_map: PrefixMap,
                     component: str) -> dict[str, Tensor]:
    """Rename every key of `state_dict` by `prefix_map`; unknown keys and clashes are errors."""
    out: dict[str, Tensor] = {}
    unmapped = []
    for key, tensor in state_dict.items():
        new_key = original_key(prefix_map, key)
        if new_key is None:
            unmapped.append(key)
            continue
        if new_key in out:
            raise ValueError(f"{component}: two parameters map to {new_key}")
        reshape = prefix_map.find(key)[0].reshape
        out[new_key] = reshape(tensor) if reshape else tensor
    if unmapped:
        raise ValueError(f"{component}: no original-layout name for {len(unmapped)} parameter(s), "
                         f"e.g. {unmapped[:5]}")
    return out


def _per_block(value, count: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * count


def unet_prefix_map(config: Mapping) -> PrefixMap:
    """Prefix map of a UNet2DConditionModel (SD 1.x/2.x/XL) from its config."""
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"unet: unsupported mid_block_type {config['mid_block_type']!r}")
    levels = len(config["block_out_channels"])
    layers = _per_block(config["layers_per_block"], levels)
    m = PrefixMap()
    m.add("conv_in.", "input_blocks.0.0.")
    m.add("time_embedding.", "time_embed.", LINEAR_PAIR)
    m.add("add_embedding.", "label_emb.0.", LINEAR_PAIR)
    m.add("class_embedding.", "label_emb.0.", LINEAR_PAIR)
    m.add("conv_norm_out.", "out.0.")
    m.add("conv_out.", "out.2.")

    index = 1
    for level in range(levels):
        for j in range(layers[level]):
            m.add(f"down_blocks.{level}.resnets.{j}.", f"input_blocks.{index}.0.", UNET_RESNET)
            m.add(f"down_blocks.{level}.attentions.{j}.", f"input_blocks.{index}.1.")
            index += 1
        if level < levels - 1:
            m.add(f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{index}.0.op.")
            index += 1

    m.add("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET)
    m.add("mid_block.attentions.0.", "middle_block.1.")
    m.add("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET)

    index = 0
    for level, block_type in enumerate(config["up_block_types"]):
        for j in range(layers[levels - 1 - level] + 1):
            m.add(f"up_blocks.{level}.resnets.{j}.", f"output_blocks.{index}.0.", UNET_RESNET)
            m.add(f"up_blocks.{level}.attentions.{j}.", f"output_blocks.{index}.1.")
            index += 1
        if level < levels - 1:
            slot = 2 if "CrossAttn" in block_type else 1
            m.add(f"up_blocks.{level}.upsamplers.0.conv.", f"output_blocks.{index - 1}.{slot}.conv.")
    return m


def unet_to_ldm(state_dict: Mapping[str, Tensor], config: Mapping) -> dict[str, Tensor]:
    """UNet2DConditionModel weights -> `diffusion_model` keys (without the model prefix)."""
    return apply_prefix_map(state_dict, unet_prefix_map(config), "unet")


def _linear_to_conv(tensor: Tensor) -> Tensor:
    return tensor[:, :, None, None] if tensor.ndim == 2 else tensor


def vae_prefix_map(config: Mapping) -> PrefixMap:
    """Prefix map of an AutoencoderKL from its config."""
    levels = len(config["block_out_channels"])
    layers = int(config["layers_per_block"])
    m = PrefixMap()
    for name in ("quant_conv.", "post_quant_conv.", "encoder.conv_in.", "encoder.conv_out.",
                 "decoder.conv_in.", "decoder.conv_out."):
        m.add(name, name)
    for part in ("encoder", "decoder"):
        m.add(f"{part}.conv_norm_out.", f"{part}.norm_out.")
        m.add(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", VAE_RESNET)
        m.add(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", VAE_RESNET)
        m.add(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION,
              _linear_to_conv)
    for level in range(levels):
        for j in range(layers):
            m.add(f"encoder.down_blocks.{level}.resnets.{j}.", f"encoder.down.{level}.block.{j}.",
                  VAE_RESNET)
        if level < levels - 1:
            m.add(f"encoder.down_blocks.{level}.downsamplers.0.conv.",
                  f"encoder.down.{level}.downsample.conv.")
    for level in range(levels):
        original = levels - 1 - level
        for j in range(layers + 1):
            m.add(f"decoder.up_blocks.{level}.resnets.{j}.", f"decoder.up.{original}.block.{j}.",
                  VAE_RESNET)
        if level < levels - 1:
            m.add(f"decoder.up_blocks.{level}.upsamplers.0.conv.",
                  f"decoder.up.{original}.upsample.conv.")
    return m


def vae_to_ldm(state_dict: Mapping[str, Tensor], config: Mapping) -> dict[str, Tensor]:
    """AutoencoderKL weights -> `first_stage_model` keys (without the prefix)."""
    return apply_prefix_map(state_dict, vae_prefix_map(config), "vae")


def _text_model_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Normalise a CLIP text state dict to `text_model.`-prefixed keys.

    transformers 5 saves CLIPTextModel without the `text_model.` level that
    CLIPTextModelWithProjection (and older versions) keep.
    """
    out = {}
    for key, tensor in state_dict.items():
        if key.startswith(("text_model.", "text_projection.")):
            out[key] = tensor
        else:
            out["text_model." + key] = tensor
    return out


def clip_to_ldm(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CLIPTextModel (OpenAI ViT-L) weights -> the transformers layout SD keeps (`text_model.*`)."""
    return _text_model_keys(state_dict)


OPEN_CLIP_LAYER = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                   ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))


def open_clip_to_ldm(state_dict: Mapping[str, Tensor],
                     repeat_last_layer: bool = False) -> dict[str, Tensor]:
    """CLIPTextModel(WithProjection) weights -> the OpenCLIP layout (SD 2.x, SDXL's second encoder).

    q/k/v projections are fused into `attn.in_proj_*`, the projection is stored transposed, and
    a square identity `text_projection` is added when the model has none (SD 2.x). With
    `repeat_last_layer`, the last layer is repeated once more (see SD2_DIFFUSERS_TEXT_LAYERS).
    """
    sd = _text_model_keys(state_dict)
    sd.pop("text_model.embeddings.position_ids", None)
    layer_prefix = "text_model.encoder.layers."
    layers = sorted({int(k[len(layer_prefix):].split(".")[0]) for k in sd if k.startswith(layer_prefix)})
    m = PrefixMap()
    m.add("text_model.embeddings.token_embedding.", "token_embedding.")
    m.add("text_model.final_layer_norm.", "ln_final.")
    for i in layers:
        m.add(f"{layer_prefix}{i}.", f"transformer.resblocks.{i}.", OPEN_CLIP_LAYER)

    special = {"text_model.embeddings.position_embedding.weight", "text_projection.weight"}
    qkv = {k for k in sd if ".self_attn." in k and k.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj")}
    out = apply_prefix_map({k: v for k, v in sd.items() if k not in special | qkv}, m, "text encoder")

    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    for i in layers:
        attn = f"{layer_prefix}{i}.self_attn."
        for kind in ("weight", "bias"):
            parts = [sd[f"{attn}{p}_proj.{kind}"] for p in ("q", "k", "v")]
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(parts, dim=0)

    hidden = out["positional_embedding"].shape[-1]
    projection = sd.get("text_projection.weight")
    out["text_projection"] = (projection.T.contiguous() if projection is not None
                              else torch.eye(hidden, dtype=out["positional_embedding"].dtype,
                                             device=out["positional_embedding"].device))
    if repeat_last_layer and layers:
        last, extra = f"transformer.resblocks.{layers[-1]}.", f"transformer.resblocks.{layers[-1] + 1}."
        out.update({extra + k[len(last):]: v.clone() for k, v in list(out.items())
                    if k.startswith(last)})
    return out


def _prefixed(prefix: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


def _num_text_layers(config) -> int:
    return int(getattr(config, "num_hidden_layers", 0))


def family_of(arch: str) -> str:
    """Layout family of an architecture name: sd1, sd2 (sd2, sd2v) or sdxl."""
    try:
        return FAMILIES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(FAMILIES)}") from None


def to_ldm_state_dict(arch: str, unet, vae, text_encoder, text_encoder_2=None) -> dict[str, Tensor]:
    """One original-layout state dict from diffusers models (anything with .state_dict()/.config)."""
    family = family_of(arch)
    if (family == "sdxl") != (text_encoder_2 is not None):
        raise ValueError(f"{arch}: SDXL needs two text encoders, SD 1.x/2.x exactly one")
    out = _prefixed(UNET_PREFIX, unet_to_ldm(unet.state_dict(), unet.config))
    out.update(_prefixed(VAE_PREFIX, vae_to_ldm(vae.state_dict(), vae.config)))
    text_prefixes = TEXT_PREFIXES[family]
    if family == "sd1":
        out.update(_prefixed(text_prefixes[0], clip_to_ldm(text_encoder.state_dict())))
    elif family == "sd2":
        repeat = _num_text_layers(text_encoder.config) == SD2_DIFFUSERS_TEXT_LAYERS
        out.update(_prefixed(text_prefixes[0], open_clip_to_ldm(text_encoder.state_dict(), repeat)))
    else:
        out.update(_prefixed(text_prefixes[0], clip_to_ldm(text_encoder.state_dict())))
        out.update(_prefixed(text_prefixes[1], open_clip_to_ldm(text_encoder_2.state_dict())))
    return out
