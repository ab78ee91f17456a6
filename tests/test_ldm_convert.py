"""Diffusers -> original SD layout: exact round trips through diffusers' own single-file loader,
and full key coverage at real SD 1.5 / 2.1 / XL sizes on the meta device."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors import safe_open

from core.dataset.demo import build_pipeline, save_demo_single_file
from core.models.ldm_convert import to_ldm_state_dict, unet_to_ldm, vae_to_ldm
from core.models.single_file import save_single_file

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module", params=["sd1", "sd2v", "sdxl"])
def saved_demo(request, tmp_path_factory):
    arch = request.param
    folder = tmp_path_factory.mktemp(arch)
    pipe = build_pipeline(arch, seed=3)
    pipe.save_pretrained(folder / "model")
    save_demo_single_file(pipe, arch, folder / "model.safetensors")
    return arch, pipe, folder


def _pipeline_class(arch):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline


def test_single_file_loads_back_exactly_with_diffusers(saved_demo):
    arch, pipe, folder = saved_demo
    loaded = _pipeline_class(arch).from_single_file(
        str(folder / "model.safetensors"), config=str(folder / "model"), local_files_only=True)
    compared = 0
    for name in COMPONENTS:
        original = getattr(pipe, name, None)
        if original is None:
            continue
        expected, got = original.state_dict(), getattr(loaded, name).state_dict()
        assert set(got) == set(expected), name
        mismatched = [k for k in expected if not torch.equal(expected[k], got[k])]
        assert not mismatched, f"{name}: {mismatched[:5]}"
        compared += len(expected)
    assert compared > 500
    assert loaded.scheduler.config.prediction_type == pipe.scheduler.config.prediction_type


def test_single_file_is_in_the_original_layout(saved_demo):
    arch, _, folder = saved_demo
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        metadata = f.metadata()
        q_shape = f.get_slice("first_stage_model.encoder.mid.attn_1.q.weight").get_shape()
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.",
                             "conditioner.embedders.")) for k in keys)
    assert len(q_shape) == 4 and q_shape[2:] == [1, 1]  # 1x1 conv, as the original VAE has it
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    text_keys = {
        "sd1": ["cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight"],
        "sd2v": ["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",
                 "cond_stage_model.model.text_projection"],
        "sdxl": ["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                 "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_bias",
                 "conditioner.embedders.1.model.text_projection",
                 "model.diffusion_model.label_emb.0.0.weight"],
    }[arch]
    assert set(text_keys) <= keys
    assert metadata["studio.arch"] == arch and metadata["studio.demo"] == "true"
    assert metadata["modelspec.prediction_type"] == ("v" if arch == "sd2v" else "epsilon")


def test_unmapped_parameter_is_an_error():
    pipe = build_pipeline("sd1")
    state_dict = dict(pipe.unet.state_dict())
    state_dict["surprise.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="surprise.weight"):
        unet_to_ldm(state_dict, pipe.unet.config)
    vae_config = dict(pipe.vae.config, layers_per_block=0)  # wrong layout: no rule for resnets
    with pytest.raises(ValueError, match="vae"):
        vae_to_ldm(pipe.vae.state_dict(), vae_config)


def test_save_single_file_dtype_metadata_and_shared_tensors(tmp_path):
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    state_dict = {"a.weight": weight, "b.weight": weight, "c.view": weight[0],
                  "steps": torch.tensor([3], dtype=torch.int64)}
    path = save_single_file(tmp_path / "x.safetensors", state_dict, dtype=torch.float16,
                            metadata={"arch": "sd1", "epochs": 2})
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"arch": "sd1", "epochs": "2"}
        assert f.get_tensor("a.weight").dtype == torch.float16
        assert torch.equal(f.get_tensor("b.weight"), weight.half())
        assert torch.equal(f.get_tensor("c.view"), weight[0].half())
        assert f.get_tensor("steps").dtype == torch.int64
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


CA, DOWN, UP, CA_UP = "CrossAttnDownBlock2D", "DownBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"
REAL_UNETS = {
    "sd1": dict(cross_attention_dim=768, attention_head_dim=8,
                down_block_types=(CA, CA, CA, DOWN), up_block_types=(UP, CA_UP, CA_UP, CA_UP)),
    "sd2v": dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True,
                 down_block_types=(CA, CA, CA, DOWN), up_block_types=(UP, CA_UP, CA_UP, CA_UP)),
    "sdxl": dict(block_out_channels=(320, 640, 1280), down_block_types=(DOWN, CA, CA),
                 up_block_types=(CA_UP, CA_UP, UP), transformer_layers_per_block=(1, 2, 10),
                 attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              hidden_act="quick_gelu", projection_dim=768)
OPEN_CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                   num_hidden_layers=23, hidden_act="gelu", projection_dim=512)
OPEN_CLIP_BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                       num_hidden_layers=32, hidden_act="gelu", projection_dim=1280)
# (diffusers model type, unet keys, text keys, keys a real checkpoint of this kind has)
REAL_EXPECTED = {
    "sd1": ("v1", 686, 196, ["model.diffusion_model.output_blocks.2.1.conv.weight",
                             "model.diffusion_model.input_blocks.9.0.op.weight",
                             "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias"]),
    "sd2v": ("v2", 686, 24 * 12 + 5, ["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight",
                                      "cond_stage_model.model.ln_final.weight"]),
    "sdxl": ("xl_base", 1680, 196 + 32 * 12 + 5, [
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"]),
}


def _real_size_models(arch):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        unet = UNet2DConditionModel(**REAL_UNETS[arch])
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4)
        if arch == "sdxl":
            text = [CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                    CLIPTextModelWithProjection(CLIPTextConfig(**OPEN_CLIP_BIG_G))]
        else:
            text = [CLIPTextModel(CLIPTextConfig(**(CLIP_L if arch == "sd1" else OPEN_CLIP_H)))]
    return unet, vae, text


@pytest.mark.parametrize("arch", ["sd1", "sd2v", "sdxl"])
def test_real_size_layout_on_meta_device(arch):
    from diffusers.loaders import single_file_utils as sfu

    unet, vae, text = _real_size_models(arch)
    state_dict = to_ldm_state_dict(arch, unet, vae, *text)
    model_type, unet_keys, text_keys, known = REAL_EXPECTED[arch]
    assert sfu.infer_diffusers_model_type(state_dict) == model_type
    assert sum(k.startswith("model.diffusion_model.") for k in state_dict) == unet_keys
    assert sum(k.startswith("first_stage_model.") for k in state_dict) == 248
    assert sum(k.startswith(("cond_stage_model.", "conditioner.")) for k in state_dict) == text_keys
    assert set(known) <= set(state_dict)
    for model, back in ((unet, sfu.convert_ldm_unet_checkpoint(state_dict, unet.config)),
                        (vae, sfu.convert_ldm_vae_checkpoint(state_dict, vae.config))):
        expected = model.state_dict()
        assert set(back) == set(expected)
        assert all(back[k].shape == expected[k].shape for k in expected)
