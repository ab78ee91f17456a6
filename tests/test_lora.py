"""LoRA: inject with peft, kohya/diffusers files, and merging that matches diffusers' loader."""
import pytest
import torch

from core.dataset.demo import build_pipeline
from core.models.lora import add_lora, load_lora_kohya, lora_state_dict_kohya, merge_lora_into, save_lora

RANK, ALPHA = 4, 2.0


def parts(pipe) -> dict:
    return {"unet": pipe.unet, "text_encoder": pipe.text_encoder}


def unet_out(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    sample, context = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 8, 32, generator=g)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


def te_out(text_encoder) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(torch.tensor([[49406, 320, 1125, 539, 49407]])).last_hidden_state


def randomize_lora(*models, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in models:
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=g) * 0.2)


@pytest.fixture
def trained(tmp_path):
    """A pipeline with random all_linear_conv LoRA weights on U-Net and text encoder."""
    pipe = build_pipeline("sd1", 0)
    add_lora(parts(pipe), rank=RANK, alpha=ALPHA, targets="all_linear_conv")
    randomize_lora(pipe.unet, pipe.text_encoder)
    return pipe


def test_add_lora_trains_only_lora_and_starts_as_identity():
    pipe = build_pipeline("sd1", 0)
    before_unet, before_te = unet_out(pipe.unet), te_out(pipe.text_encoder)
    adapted = add_lora(parts(pipe), rank=RANK, alpha=ALPHA)
    assert len(adapted["unet"]) == 4 * 2 * 2 * 3  # q,k,v,out x 2 attn x 2 transformers x 3 blocks
    assert len(adapted["text_encoder"]) == 4 * 2  # q,k,v,out x 2 layers
    for model in (pipe.unet, pipe.text_encoder):
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
    torch.testing.assert_close(unet_out(pipe.unet), before_unet)
    torch.testing.assert_close(te_out(pipe.text_encoder), before_te)
    randomize_lora(pipe.unet, pipe.text_encoder)
    assert not torch.allclose(unet_out(pipe.unet), before_unet)
    assert not torch.allclose(te_out(pipe.text_encoder), before_te)


def test_target_presets_grow_and_unknown_preset_is_an_error():
    counts = {}
    for targets in ("attention", "attention_mlp", "all_linear_conv"):
        pipe = build_pipeline("sd1", 0)
        adapted = add_lora(parts(pipe), rank=RANK, targets=targets)
        counts[targets] = len(adapted["unet"]), len(adapted["text_encoder"])
    assert counts["attention"] < counts["attention_mlp"] < counts["all_linear_conv"]
    assert counts["attention_mlp"][1] == counts["all_linear_conv"][1] == 12
    names = adapted["unet"]
    assert "down_blocks.0.resnets.0.conv1" in names and "down_blocks.0.downsamplers.0.conv" in names
    assert "up_blocks.0.upsamplers.0.conv" in names and "down_blocks.0.attentions.0.proj_in" in names
    assert "conv_in" not in names and "time_embedding.linear_1" not in names
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        add_lora({"unet": build_pipeline("sd1", 0).unet}, targets="everything")


def test_kohya_state_dict_names_shapes_and_alpha(trained):
    sd = lora_state_dict_kohya(parts(trained))
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert sd[f"{q}.lora_down.weight"].shape == (RANK, 32)
    assert sd[f"{q}.lora_up.weight"].shape == (32, RANK)
    assert sd[f"{q}.alpha"].item() == ALPHA
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (RANK, 32, 3, 3)
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].shape == (32, RANK, 1, 1)
    assert sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (RANK, 32, 1, 1)
    assert "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha" in sd
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in sd
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight" in sd
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in sd)
    assert lora_state_dict_kohya({"unet": trained.unet}, alpha=8.0)[f"{q}.alpha"].item() == 8.0


def test_kohya_file_loads_in_diffusers_as_our_merge_does(trained, tmp_path):
    path = save_lora(tmp_path / "subject.safetensors", parts(trained))
    with_adapter_unet, with_adapter_te = unet_out(trained.unet), te_out(trained.text_encoder)

    loaded = build_pipeline("sd1", 0)
    loaded.load_lora_weights(str(tmp_path), weight_name=path.name)
    merged = build_pipeline("sd1", 0)
    merge_lora_into(parts(merged), load_lora_kohya(path)[0])
    base = build_pipeline("sd1", 0)

    assert not torch.allclose(with_adapter_unet, unet_out(base.unet), atol=1e-3)
    assert not torch.allclose(with_adapter_te, te_out(base.text_encoder), atol=1e-3)
    for out in (unet_out(loaded.unet), unet_out(merged.unet)):
        torch.testing.assert_close(out, with_adapter_unet, atol=1e-4, rtol=1e-4)
    for out in (te_out(loaded.text_encoder), te_out(merged.text_encoder)):
        torch.testing.assert_close(out, with_adapter_te, atol=1e-4, rtol=1e-4)


def test_diffusers_format_round_trip(trained, tmp_path):
    path = save_lora(tmp_path / "d.safetensors", parts(trained), fmt="diffusers")
    state_dict, _ = load_lora_kohya(path)
    assert any(k.startswith("unet.") for k in state_dict) and any(k.startswith("text_encoder.") for k in state_dict)
    loaded = build_pipeline("sd1", 0)
    loaded.load_lora_weights(str(tmp_path), weight_name=path.name)
    torch.testing.assert_close(unet_out(loaded.unet), unet_out(trained.unet), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(te_out(loaded.text_encoder), te_out(trained.text_encoder), atol=1e-4, rtol=1e-4)


def test_merge_multiplier_zero_is_a_no_op_and_unknown_keys_are_errors(trained):
    sd = lora_state_dict_kohya(parts(trained))
    pipe = build_pipeline("sd1", 0)
    before = unet_out(pipe.unet)
    merged = merge_lora_into(parts(pipe), sd, multiplier=0.0)
    assert len(merged) == len(sd) // 3
    torch.testing.assert_close(unet_out(pipe.unet), before)

    stray = dict(sd, **{"lora_unet_no_such_block.lora_down.weight": torch.zeros(RANK, 32),
                        "lora_unet_no_such_block.lora_up.weight": torch.zeros(32, RANK)})
    with pytest.raises(ValueError, match="lora_unet_no_such_block"):
        merge_lora_into(parts(pipe), stray)
    with pytest.raises(ValueError, match="lora_te_text_model_encoder_layers_0_self_attn_q_proj"):
        merge_lora_into({"unet": pipe.unet}, sd)
    with pytest.raises(ValueError, match="without both"):
        merge_lora_into(parts(pipe), {"lora_unet_conv_in.lora_down.weight": torch.zeros(1)})


def test_save_is_atomic_with_kohya_metadata(trained, tmp_path):
    path = save_lora(tmp_path / "out" / "x.safetensors", parts(trained),
                     metadata={"ss_output_name": "x"})
    state_dict, metadata = load_lora_kohya(path)
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == str(RANK) and float(metadata["ss_network_alpha"]) == ALPHA
    assert metadata["ss_output_name"] == "x"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.safetensors"]

    old = path.read_bytes()
    with pytest.raises(ValueError, match="unknown LoRA format"):
        save_lora(path, {"unet": trained.unet}, fmt="ckpt")
    assert path.read_bytes() == old
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.safetensors"]
