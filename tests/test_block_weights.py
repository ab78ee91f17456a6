"""Block-weighted LoRA (sd-scripts' down/mid/up_lr_weight, block_lr_zero_threshold, block_dims, block_alphas,
conv_block_dims, conv_block_alphas): the weights and the block numbering equal sd-scripts', the optimizer's
groups carry lr x weight per block on real-shaped SD 1.x and SDXL U-Nets, a zero-weight block does not change
in a run, block ranks and alphas reach the saved file, which merges and loads in diffusers."""
import json
import math
import types

import pytest
import torch
from trainkit import events, train, train_values

from core.config import ConfigError, TrainConfig, validate
from core.config.block_weights import block_lr_weights, parse_lr_weight, preset_weights
from core.models.lora_blocks import block_index
from core.train.block_lr import block_problems, block_ranks, unet_lr_weights
from core.train.trainable import add_lora_adapters, param_groups

SD1_TOTAL, SDXL_TOTAL = 25, 23


def meta_unet(arch: str):
    """A U-Net of the real SD 1.x or SDXL shape from the shipped config, without weights (meta device)."""
    from diffusers import UNet2DConditionModel

    folder = {"sd1": "sd1", "sdxl": "sdxl-base"}[arch]
    with open(f"core/data/configs/{folder}/unet/config.json") as f:
        config = json.load(f)
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


@pytest.fixture(scope="module")
def sd1_unet():
    return meta_unet("sd1")


@pytest.fixture(scope="module")
def sdxl_unet():
    return meta_unet("sdxl")


def test_named_weights_are_sd_scripts_curves_with_an_offset():
    s = math.sin
    assert preset_weights("sine", 3) == pytest.approx([0.0, s(math.pi / 4), 1.0])
    assert preset_weights("cosine", 3) == pytest.approx([1.0, s(math.pi / 4), 0.0])
    assert preset_weights("linear", 5) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert preset_weights("reverse_linear+0.5", 3) == pytest.approx([1.5, 1.0, 0.5])
    assert preset_weights("zeros+0.25", 2) == [0.25, 0.25]
    assert parse_lr_weight("sine", 12)[1] == pytest.approx(0.14231483827328514)  # sd-scripts' value
    assert parse_lr_weight("1,,0.5", 5) == [1.0, 0.0, 0.5, 1.0, 1.0]  # empty: 0; missing: 1
    assert parse_lr_weight("1,2,3", 2) == [1.0, 2.0]  # too many: cut
    assert parse_lr_weight("0.5", 3) == [0.5, 1.0, 1.0]
    assert parse_lr_weight("  ", 3) is None
    for bad, message in (("sawtooth", "cosine, sine, linear"), ("sine+x", "not a number"), ("1,a", "numbers")):
        with pytest.raises(ValueError, match=message):
            parse_lr_weight(bad, 12)


def test_block_weights_and_zero_threshold_in_sd_scripts_order():
    sd = block_lr_weights("sd1", "", "2", "0.05,0.2", zero_threshold=0.1)
    assert len(sd) == SD1_TOTAL and sd[:12] == [1.0] * 12 and sd[12] == 2.0 and sd[13:15] == [0.0, 0.2]
    xl = block_lr_weights("sdxl", "zeros", "1,0,1", "", 0.0)
    assert len(xl) == SDXL_TOTAL and xl[0] == xl[-1] == 1.0 and xl[1:10] == [0.0] * 9 and xl[10:13] == [1, 0, 1]
    assert block_lr_weights("sdxl", "", "", "", 0.5) is None


@pytest.mark.parametrize("arch, module, block", [
    # sd-scripts' get_block_index on the kohya names of SD 1.x (diffusers layout) ...
    ("sd1", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 1),
    ("sd1", "down_blocks.0.downsamplers.0.conv", 3),
    ("sd1", "down_blocks.1.resnets.1.conv1", 5),
    ("sd1", "down_blocks.3.resnets.1.time_emb_proj", 11),
    ("sd1", "mid_block.resnets.1.conv2", 12),
    ("sd1", "mid_block.attentions.0.proj_in", 12),
    ("sd1", "up_blocks.0.resnets.0.conv1", 13),
    ("sd1", "up_blocks.0.upsamplers.0.conv", 15),
    ("sd1", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2", 24),
    # ... and of SDXL (original layout: 1 + input block, 10 + middle block part, 13 + output block)
    ("sdxl", "down_blocks.0.resnets.0.conv1", 2),
    ("sdxl", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k", 5),
    ("sdxl", "down_blocks.2.resnets.1.conv2", 9),
    ("sdxl", "mid_block.resnets.0.conv1", 10),
    ("sdxl", "mid_block.attentions.0.transformer_blocks.9.attn1.to_v", 11),
    ("sdxl", "mid_block.resnets.1.conv1", 12),
    ("sdxl", "up_blocks.0.attentions.2.proj_out", 15),
    ("sdxl", "up_blocks.1.upsamplers.0.conv", 18),
    ("sdxl", "up_blocks.2.resnets.2.conv_shortcut", 21),
])
def test_blocks_are_numbered_as_sd_scripts_numbers_them(arch, module, block, sd1_unet, sdxl_unet):
    assert block_index(sd1_unet if arch == "sd1" else sdxl_unet, module, arch) == block


def lora_cfg(**values) -> TrainConfig:
    return TrainConfig.model_construct(train_lora=True, network_module="networks.lora", network_dim=8,
                                       network_alpha=4.0, **values)


def grouped(unet, arch: str, cfg: TrainConfig, lr: float = 1e-3):
    """The optimizer groups of a LoRA on `unet` (meta device) and each group's set of blocks."""
    model = types.SimpleNamespace(unet=unet, arch=arch)
    trained = add_lora_adapters(model, [], cfg.network_dim, cfg.network_alpha, 0.0, cfg.lora_targets, 1,
                                block_ranks(model, cfg))
    groups = param_groups(trained, lr, {}, unet_lr_weights(model, cfg))
    names = {id(p): n.split(".lora_")[0] for n, p in unet.named_parameters() if p.requires_grad}
    assert all(g["lr"] == pytest.approx(lr * g["lr_weight"]) for g in groups)  # the weight, for the lr metric
    return [(g["lr"], {block_index(unet, names[id(p)], arch) for p in g["params"]}) for g in groups]


def test_sd1_optimizer_groups_carry_the_rate_of_each_block():
    cfg = lora_cfg(down_lr_weight="sine", mid_lr_weight="2", up_lr_weight="0,0,0.5", lora_targets="all_linear_conv")
    groups = grouped(meta_unet("sd1"), "sd1", cfg)
    assert [blocks for _, blocks in groups] == [{b} for b in [*range(1, 13), *range(15, 25)]]  # 13, 14: weight 0
    rates = {blocks.pop(): lr for lr, blocks in groups}
    assert rates[1] == pytest.approx(1e-3 * math.sin(math.pi / 22))
    assert rates[11] == pytest.approx(1e-3) and rates[12] == pytest.approx(2e-3)
    assert rates[15] == pytest.approx(5e-4) and rates[24] == pytest.approx(1e-3)


def test_sdxl_optimizer_groups_carry_the_rate_of_each_block_and_skip_zero_ones():
    cfg = lora_cfg(down_lr_weight="cosine+0.25", mid_lr_weight="1,0,1", up_lr_weight="linear",
                   block_lr_zero_threshold=0.1)
    groups = grouped(meta_unet("sdxl"), "sdxl", cfg)
    rates = {}
    for lr, blocks in groups:
        assert len(blocks) == 1
        rates[blocks.pop()] = lr
    # attention only: SDXL's first input blocks and the resnet parts of the middle block have none;
    # the middle block's attention (11) has weight 0, output block 0 (13) linear's 0 is not above 0.1
    assert sorted(rates) == [5, 6, 8, 9, 14, 15, 16, 17, 18]
    assert rates[5] == pytest.approx(1e-3 * (math.sin(math.pi * 4 / 16) + 0.25))  # input_blocks.4: cosine[4]
    assert rates[14] == pytest.approx(1e-3 / 8) and rates[18] == pytest.approx(1e-3 * 5 / 8)


def test_block_dims_and_alphas_give_each_module_its_rank(sd1_unet):
    dims = [4] * SD1_TOTAL
    dims[1], dims[12], dims[24] = 2, 0, 6
    alphas = [1.0] * SD1_TOTAL
    alphas[1] = 0.5
    conv = [3] * SD1_TOTAL
    cfg = lora_cfg(block_dims=",".join(map(str, dims)), block_alphas=",".join(map(str, alphas)),
                   conv_block_dims=",".join(map(str, conv)), lora_targets="all_linear_conv")
    ranks = block_ranks(types.SimpleNamespace(unet=sd1_unet, arch="sd1"), cfg)["unet"]
    assert ranks["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"] == (2, 0.5)
    assert ranks["down_blocks.0.attentions.0.proj_in"] == (2, 0.5)  # a 1x1 conv: block_dims, as sd-scripts
    assert ranks["down_blocks.0.resnets.0.conv1"] == (3, 4.0)  # 3x3: conv_block_dims, the LoRA alpha
    assert ranks["mid_block.attentions.0.transformer_blocks.0.attn2.to_k"][0] == 0
    assert ranks["up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_q"] == (6, 1.0)


def test_settings_are_checked_against_the_model():
    with pytest.raises(ConfigError, match="down_lr_weight"):
        validate(TrainConfig, {"pretrained_model_name_or_path": "m", "train_data_dir": ["d"],
                               "down_lr_weight": "sawtooth"}, "test")
    with pytest.raises(ConfigError, match="block_dims.*25 values"):
        validate(TrainConfig, {"pretrained_model_name_or_path": "m", "train_data_dir": ["d"],
                               "block_dims": "4,4"}, "test")
    cfg = lora_cfg(down_lr_weight="1,1,1,1,1,1,1,1,1,1,1,0", block_dims=",".join(["4"] * SD1_TOTAL),
                   conv_block_dims=",".join(["4"] * SD1_TOTAL), lora_targets="all_linear_conv")
    problems = {p.field: p for p in block_problems(cfg, "sdxl")}
    assert problems["down_lr_weight"].severity == "warning" and "9 input blocks" in problems["down_lr_weight"].message
    assert problems["block_dims"].severity == "error" and "23 values for sdxl" in problems["block_dims"].message
    assert problems["conv_block_dims"].severity == "error"
    assert not block_problems(cfg.model_copy(update={"conv_block_dims": ""}), "sd1")
    nothing = lora_cfg(down_lr_weight="zeros", mid_lr_weight="0", up_lr_weight="zeros")
    assert "nothing would be trained" in block_problems(nothing, "sd1")[0].message


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


def unet_output(unet, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sample, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500])
    with torch.no_grad():
        return unet(sample, t, torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)).sample


# The demo U-Net's blocks: input 1, 2 (attention), 3 (downsampler), 4, 5; middle 12; output 13-15, 16-18
# (attention: up_blocks.1). Ranks 2-4 and alphas 1-7 differ from block to block.
DIMS = [(i % 3) + 2 for i in range(SD1_TOTAL)]
ALPHAS = [1.0 + i / 4 for i in range(SD1_TOTAL)]
BLOCKS = {"block_dims": ",".join(map(str, DIMS)), "block_alphas": ",".join(map(str, ALPHAS))}
PROBE = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 1, "down_blocks.0.attentions.1.proj_in": 2,
         "mid_block.attentions.0.proj_out": 12, "up_blocks.0.resnets.2.time_emb_proj": 15}


def block_lora_model(kit, targets: str, seed: int):
    """The demo model with adapters of the BLOCKS ranks and alphas, random weights, on its U-Net."""
    from core.models.sd import load_sd_model

    model = load_sd_model(str(kit / "model"))
    cfg = lora_cfg(lora_targets=targets, **BLOCKS)
    add_lora_adapters(model, [], cfg.network_dim, cfg.network_alpha, 0.0, cfg.lora_targets, 1, block_ranks(model, cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    return model


def assert_merged_and_loaded_as_trained(model, kit, path) -> None:
    """The LoRA file at `path`, merged into the base model by our merge and loaded by diffusers'
    load_lora_weights, computes what `model`'s adapters compute."""
    from diffusers import StableDiffusionPipeline

    from core.models.lora import merge_lora_into, read_lora
    from core.models.sd import load_sd_model

    merged = load_sd_model(str(kit / "model"))
    merge_lora_into({"unet": merged.unet}, read_lora(path, sdxl=False))
    pipe = StableDiffusionPipeline.from_pretrained(str(kit / "model"), safety_checker=None)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    trained = unet_output(model.unet)
    assert not torch.allclose(trained, unet_output(load_sd_model(str(kit / "model")).unet), atol=1e-3)
    torch.testing.assert_close(unet_output(merged.unet), trained, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(unet_output(pipe.unet), trained, atol=1e-4, rtol=1e-4)


def test_block_ranks_and_alphas_reach_a_kohya_file_that_merges_and_loads_in_diffusers(kit, tmp_path):
    from core.models.lora import load_lora_kohya, lora_state_dict_kohya, save_lora

    model = block_lora_model(kit, "all_linear_conv", seed=3)
    state = lora_state_dict_kohya({"unet": model.unet})
    for module, block in PROBE.items():
        name = "lora_unet_" + module.replace(".", "_")
        assert state[f"{name}.lora_down.weight"].shape[0] == DIMS[block]
        assert state[f"{name}.alpha"].item() == ALPHAS[block]
    assert state["lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight"].shape[0] == 8  # 3x3: the LoRA rank

    path = save_lora(tmp_path / "blocks.safetensors", {"unet": model.unet})
    saved = load_lora_kohya(path)[0]
    assert len({v.item() for k, v in saved.items() if k.endswith(".alpha")}) == 1  # one alpha, the scale kept
    assert_merged_and_loaded_as_trained(model, kit, path)


def test_block_ranks_and_alphas_in_the_diffusers_format_merge_and_load(kit, tmp_path):
    from core.models.lora import save_lora

    model = block_lora_model(kit, "attention", seed=4)
    path = save_lora(tmp_path / "blocks.safetensors", {"unet": model.unet}, fmt="diffusers")
    assert_merged_and_loaded_as_trained(model, kit, path)


@pytest.mark.slow
def test_a_zero_weight_block_does_not_change_in_a_run(kit, tmp_path):
    from core.models.lora import load_lora_kohya, merge_lora_into
    from core.models.sd import load_sd_model

    values = train_values(kit, tmp_path / "out", max_train_steps=3, train_lora=True, network_dim=4,
                          network_alpha=2.0, learning_rate=1e-2, lora_targets="all_linear_conv",
                          up_lr_weight="1,1,1,0,0,0", down_lr_weight="sine+0.5", **BLOCKS)
    train(values, tmp_path / "run")
    assert [e["value"] for e in events(tmp_path / "run") if e.get("name") == "lr"][0] == pytest.approx(1e-2)
    weights, metadata = load_lora_kohya(tmp_path / "out" / "model.safetensors")
    assert not any(k.startswith("lora_unet_up_blocks_1_") for k in weights)  # no adapters in zero blocks
    assert json.loads(metadata["ss_network_args"]) == {"down_lr_weight": "sine+0.5", "up_lr_weight": "1,1,1,0,0,0",
                                                       **BLOCKS}
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "2")
    for module, block in PROBE.items():
        name = "lora_unet_" + module.replace(".", "_")
        assert weights[f"{name}.lora_down.weight"].shape[0] == DIMS[block]
        assert weights[f"{name}.lora_up.weight"].abs().sum() > 0  # trained

    base, merged = load_sd_model(str(kit / "model")), load_sd_model(str(kit / "model"))
    merge_lora_into({"unet": merged.unet}, weights)
    before, after = base.unet.state_dict(), merged.unet.state_dict()
    frozen = [k for k in before if k.startswith("up_blocks.1.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert {k.split(".")[0] for k in changed} == {"down_blocks", "mid_block", "up_blocks"}


def test_sliders_follow_the_field_and_the_model_and_write_numbers_back():
    from tabs.block_sliders import field_text, slider_updates

    sd = slider_updates("sine", "down", {"model_arch": "sd1"})
    assert len(sd) == 12 and all(u["visible"] for u in sd)
    assert [u["label"] for u in sd[:2]] == ["IN00", "IN01"] and sd[11]["value"] == pytest.approx(1.0)
    xl = slider_updates("sine", "down", {"model_arch": "sdxl"})
    assert [u["visible"] for u in xl] == [True] * 9 + [False] * 3 and xl[8]["value"] == pytest.approx(1.0)
    mid = slider_updates("", "mid", {"model_arch": "sdxl"})
    assert [(u["label"], u["value"]) for u in mid] == [("M00", 1.0), ("M01", 1.0), ("M02", 1.0)]
    assert [u["visible"] for u in slider_updates("", "mid", None)] == [True, False, False]  # no model yet: SD
    assert slider_updates("0,3", "up", None)[1]["value"] == 2.0  # beyond the sliders' range: at their end
    assert slider_updates("sawtooth", "up", None) == [{"__type__": "update"}] * 12  # left as typed
    assert field_text("down", {"model_arch": "sdxl"}, *([0.5] * 9 + [1.0] * 3)) == ",".join(["0.5"] * 9)
    assert field_text("mid", None, 0.25, 1, 1) == "0.25"


def test_the_training_form_has_slider_rows_that_hide_with_their_field_and_presets_round_trip(studio_home):
    import gradio as gr

    from core.config.presets import find_preset
    from tabs.form import SchemaForm
    from tabs.preset_bar import PresetBar

    with gr.Blocks() as blocks:
        bar = PresetBar("train")
        form = SchemaForm(TrainConfig, layout="tabs")
        bar.wire(form, blocks)
    rows = {name: form.companions[name][0] for name in ("down_lr_weight", "mid_lr_weight", "up_lr_weight")}
    assert rows["down_lr_weight"].elem_id == "TrainConfig-down_lr_weight-sliders"
    sliders = {name: [b for b in blocks.blocks.values() if isinstance(b, gr.Slider)
                      and b.elem_id.startswith(f"TrainConfig-{name}-")] for name in rows}
    assert [len(s) for s in sliders.values()] == [12, 3, 12]
    assert [s.label for s in sliders["mid_lr_weight"]] == ["M00", None, None]  # SD until a model is chosen
    hidden = dict(zip(form.condition_outputs, form.apply({"train_lora": False})))
    assert hidden[rows["up_lr_weight"]]["visible"] is False
    assert hidden[form.components["up_lr_weight"]]["visible"] is False
    shown = dict(zip(form.condition_outputs, form.apply({"train_lora": True, "network_module": "networks.lora"})))
    assert shown[rows["up_lr_weight"]]["visible"] is True

    blocks_values = {"train_lora": True, "down_lr_weight": "sine+0.25", "mid_lr_weight": "0.5",
                     "up_lr_weight": "1,1,0,,0.5", "block_lr_zero_threshold": 0.1, "block_dims": ",".join(["8"] * 25),
                     "conv_block_alphas": ",".join(["1.5"] * 23)}
    raw = form.show(blocks_values)
    assert "Saved" in bar.do_save_as("Blocks", *raw)[1]
    path = find_preset("train", "Blocks").path
    first = path.read_bytes()
    loaded = bar.do_load("Blocks")[:-1]
    assert "Saved" in bar.do_save("Blocks", *loaded)[1]
    assert path.read_bytes() == first
    assert {k: find_preset("train", "Blocks").values[k] for k in blocks_values} == blocks_values
