"""LoRA training runs on the tiny demo model: only adapters are saved and trained, the kohya file loads
in diffusers and changes its output, resume is exact, and incompatible options are refused."""
import pytest
import torch
from safetensors.torch import load_file

from core.config import ConfigError, TrainConfig, validate
from trainkit import train, train_values

LORA = {"train_lora": True, "network_dim": 4, "network_alpha": 2.0, "learning_rate": 1e-2}


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


def test_lora_run_saves_a_kohya_file_that_diffusers_applies(kit, tmp_path):
    from diffusers import StableDiffusionPipeline

    result = train(train_values(kit, tmp_path / "out", max_train_steps=3, train_text_encoder=True, **LORA),
                   tmp_path / "run")
    path = tmp_path / "out" / "model.safetensors"
    assert result["model"] == str(path)
    weights = load_file(str(path))
    assert weights and all(k.startswith(("lora_unet_", "lora_te_")) for k in weights)
    assert any(k.startswith("lora_te_") for k in weights)
    assert any(k.endswith("lora_up.weight") and v.abs().sum() > 0 for k, v in weights.items())  # trained

    pipe = StableDiffusionPipeline.from_pretrained(str(kit / "model"), safety_checker=None)
    sample, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    states = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = pipe.unet(sample, t, states).sample
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        after = pipe.unet(sample, t, states).sample
    assert not torch.allclose(before, after)


def test_lora_resume_equals_an_uninterrupted_run(kit, tmp_path):
    values = {"max_train_steps": 4, "save_every_n_steps": 2, "save_state": True, **LORA}
    train(train_values(kit, tmp_path / "ref", **values), tmp_path / "r1")
    train(train_values(kit, tmp_path / "again", resume=str(tmp_path / "ref" / "model-step00000002-state"), **values),
          tmp_path / "r2")
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ref" / "model-step00000002.safetensors").is_file()


def test_lora_in_the_diffusers_format(kit, tmp_path):
    train(train_values(kit, tmp_path / "out", max_train_steps=1, lora_save_format="diffusers", **LORA),
          tmp_path / "run")
    keys = load_file(str(tmp_path / "out" / "model.safetensors")).keys()
    assert keys and all(k.startswith("unet.") for k in keys)


@pytest.mark.parametrize("overrides, message", [
    ({"train_unet": False, "train_text_encoder": True}, "turn on train_unet"),
    ({"unet_blocks": ["mid"]}, "cannot be used together"),
])
def test_lora_refuses_incompatible_options(kit, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(TrainConfig, train_values(kit, tmp_path / "out", **LORA, **overrides), "test")
