"""Loading the VAE from every kind of model path: diffusers folders, full single files, VAE-only
files (.safetensors and .ckpt), with identical weights and identity; clear errors for the rest."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.dataset.demo import build_demo
from core.models.loading import load_vae, model_arch, vae_config_from_ldm, weights_identity


def vae_only_state_dict(single_file) -> dict[str, torch.Tensor]:
    """The first_stage_model.* tensors of a full checkpoint, without the prefix."""
    prefix = "first_stage_model."
    return {k[len(prefix):]: v for k, v in load_file(single_file).items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    build_demo(root / "sd1", "sd1", num_images=1, seed=1)
    build_demo(root / "sdxl", "sdxl", num_images=1, seed=2)
    vae_only = vae_only_state_dict(root / "sd1" / "model.safetensors")
    save_file(vae_only, root / "vae-only.safetensors")
    torch.save({"state_dict": vae_only}, root / "vae-only.ckpt")
    return root


def test_every_layout_loads_the_same_weights(demo):
    reference, info = load_vae(demo / "sd1" / "model")
    expected = reference.state_dict()
    pixels = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected_latents = reference.encode(pixels).latent_dist.mean
    sources = [("model.safetensors", ""), ("model", "vae-only.safetensors"),
               ("model", "vae-only.ckpt"), ("model", "sd1/model/vae"),
               ("model", "sd1/model/vae/diffusion_pytorch_model.safetensors")]
    for model, vae_path in sources:
        vae, other = load_vae(demo / "sd1" / model, demo / vae_path if vae_path else "")
        got = vae.state_dict()
        assert set(got) == set(expected), (model, vae_path)
        assert all(torch.equal(got[k], expected[k]) for k in expected), (model, vae_path)
        assert other.identity == info.identity, (model, vae_path)
        assert vae.config.norm_num_groups == reference.config.norm_num_groups == 8
        with torch.no_grad():
            torch.testing.assert_close(vae.encode(pixels).latent_dist.mean, expected_latents)
    assert info.layout == "diffusers-pipeline" and info.arch == "sd1" and not info.separate_vae
    assert info.scaling_factor == pytest.approx(0.18215)
    assert len(info.identity) == 64 and info.parameters == sum(p.numel() for p in expected.values())


def test_identity_changes_with_one_weight(demo, tmp_path):
    weights = load_file(demo / "vae-only.safetensors")
    weights["encoder.conv_in.bias"][0] += 1e-3
    save_file(weights, tmp_path / "changed.safetensors")
    _, original = load_vae(demo / "vae-only.safetensors")
    _, changed = load_vae(demo / "vae-only.safetensors", tmp_path / "changed.safetensors")
    assert changed.identity != original.identity
    assert changed.separate_vae and changed.arch == "vae"


def test_identity_ignores_storage_precision(demo, tmp_path):
    weights = {k: v.half() for k, v in load_file(demo / "vae-only.safetensors").items()}
    save_file(weights, tmp_path / "half.safetensors")
    save_file({k: v.float() for k, v in weights.items()}, tmp_path / "half-as-float.safetensors")
    _, half = load_vae(tmp_path / "half.safetensors")
    _, widened = load_vae(tmp_path / "half-as-float.safetensors")
    assert half.identity == widened.identity


def test_sdxl_scaling_factor_and_original_vae_flag(demo):
    vae, info = load_vae(demo / "sdxl" / "model.safetensors")
    assert info.arch == "sdxl" and info.original_sdxl_vae
    assert info.scaling_factor == vae.config.scaling_factor == pytest.approx(0.13025)
    _, folder = load_vae(demo / "sdxl" / "model")
    assert folder.identity == info.identity and folder.scaling_factor == pytest.approx(0.13025)
    _, separate = load_vae(demo / "sdxl" / "model.safetensors", demo / "vae-only.safetensors")
    assert separate.separate_vae and not separate.original_sdxl_vae
    assert separate.scaling_factor == pytest.approx(0.13025)  # the base model's, not the VAE's


def test_model_arch_from_names(demo, tmp_path):
    build_demo(tmp_path / "sd2v", "sd2v", num_images=1)
    assert model_arch(tmp_path / "sd2v" / "model.safetensors") == "sd2"
    assert model_arch(tmp_path / "sd2v" / "model") == "sd2"
    assert model_arch(demo / "sd1" / "model") == "sd1"
    assert model_arch(demo / "sdxl" / "model") == "sdxl"
    assert model_arch(demo / "vae-only.ckpt") == "vae"


@pytest.mark.parametrize("block_out_channels", [(128, 256, 512, 512), (64, 128)])
def test_config_inferred_at_real_size(block_out_channels):
    """SD's real VAE shape (and a smaller one) on the meta device: inferred config, diffusers'
    conversion and strict loading agree with the model the keys came from."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from core.models.ldm_convert import vae_to_ldm

    levels = len(block_out_channels)
    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=block_out_channels, layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * levels,
                            up_block_types=("UpDecoderBlock2D",) * levels, latent_channels=4)
    ldm = vae_to_ldm(vae.state_dict(), vae.config)
    config = vae_config_from_ldm(ldm, "sdxl")
    assert config["block_out_channels"] == list(block_out_channels)
    assert config["layers_per_block"] == 2 and config["latent_channels"] == 4
    assert config["norm_num_groups"] == 32 and config["scaling_factor"] == 0.13025
    with torch.device("meta"):
        rebuilt = AutoencoderKL(**config)
    rebuilt.load_state_dict(convert_ldm_vae_checkpoint(ldm, config), strict=True, assign=True)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
           {k: v.shape for k, v in vae.state_dict().items()}


def test_lora_file_is_refused_by_name(demo, tmp_path):
    lora = tmp_path / "my_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, lora)
    with pytest.raises(ValueError, match=r"my_lora\.safetensors: no VAE weights.*LoRA"):
        load_vae(demo / "sd1" / "model", lora)


def test_checkpoint_without_vae_is_refused(demo, tmp_path):
    weights = {k: v for k, v in load_file(demo / "sd1" / "model.safetensors").items()
               if not k.startswith("first_stage_model.")}
    save_file(weights, tmp_path / "no_vae.safetensors")
    with pytest.raises(ValueError, match=r"no_vae\.safetensors: no VAE weights.*separate VAE"):
        load_vae(tmp_path / "no_vae.safetensors")


def test_damaged_and_missing_files_are_refused_by_name(demo, tmp_path):
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match=r"broken\.safetensors: cannot read this .*damaged or not a model"):
        load_vae(corrupt)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((demo / "vae-only.safetensors").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"truncated\.safetensors"):
        load_vae(truncated)
    with pytest.raises(ValueError, match=r"nowhere\.safetensors: model path not found"):
        load_vae(tmp_path / "nowhere.safetensors")
    with pytest.raises(ValueError, match=r"notes\.txt: not a model file"):
        (tmp_path / "notes.txt").write_text("hello")
        load_vae(tmp_path / "notes.txt")


class Payload:
    """Any class: a weights-only load must refuse to import and build it."""


def test_ckpt_with_code_is_not_unpickled(demo, tmp_path):
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}, "extra": Payload()},
               tmp_path / "unsafe.ckpt")
    with pytest.raises(ValueError, match=r"unsafe\.ckpt: cannot read this checkpoint"):
        load_vae(tmp_path / "unsafe.ckpt")


def test_weights_identity_is_order_independent():
    first = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    second = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    second.load_state_dict(dict(reversed(list(first.state_dict().items()))))
    assert weights_identity(first) == weights_identity(second)
    with torch.no_grad():
        second[1].bias += 1
    assert weights_identity(first) != weights_identity(second)
