"""Whole-model loading and saving (core.models.sd): demo folders and single files load the same
weights, saves round-trip through our loader and diffusers' own, bad files give clear errors,
and the shipped real-size configs convert every key both ways (meta device)."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core.dataset.demo import build_demo, build_pipeline
from core.fsutil import default_mode, recover_folder
from core.models import sd as sd_module
from core.models.ldm_convert import to_ldm_state_dict
from core.models.sd import CONFIGS_KEY, empty_model, load_sd_model, models_from_state, save_sd_model, shipped_configs

PARTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-model")
    for arch in ("sd1", "sd2v"):
        build_demo(root / arch, arch, num_images=1, seed=4)
    return root


def assert_same_weights(a, b, parts=PARTS):
    for part in parts:
        expected, got = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert set(got) == set(expected), part
        different = [k for k in expected if not torch.equal(expected[k], got[k])]
        assert not different, f"{part}: {different[:5]}"
        assert all(t.dtype == torch.float32 for t in got.values() if t.is_floating_point())


@pytest.mark.parametrize("arch, family, v", [("sd1", "sd1", False), ("sd2v", "sd2", True)])
def test_folder_single_file_and_ckpt_load_the_same_model(demos, tmp_path, monkeypatch, arch, family, v):
    folder = load_sd_model(str(demos / arch / "model"))
    single = load_sd_model(str(demos / arch / "model.safetensors"))
    # A .ckpt has no metadata: it is read like a third-party file, with the shipped configs of
    # the architecture its keys show (here swapped for the demo's, which are tiny).
    torch.save({"state_dict": load_file(demos / arch / "model.safetensors")}, tmp_path / "m.ckpt")
    asked = []
    def demo_configs(arch_of_keys, v_prediction):
        asked.append((arch_of_keys, v_prediction))
        return sd_module.model_configs(build_pipeline(arch, seed=0))
    monkeypatch.setattr(sd_module, "shipped_configs", demo_configs)
    ckpt = load_sd_model(str(tmp_path / "m.ckpt"), v_parameterization=v)
    assert asked == [(family, v)]
    for model in (folder, single, ckpt):
        assert (model.arch, model.v_prediction) == (family, v)
        assert model.noise_scheduler.config.prediction_type == ("v_prediction" if v else "epsilon")
        assert type(model.noise_scheduler).__name__ == "DDPMScheduler"
        assert model.noise_scheduler.config.beta_schedule == "scaled_linear"
        assert model.noise_scheduler.config.num_train_timesteps == 1000
        assert (model.noise_scheduler.config.beta_start, model.noise_scheduler.config.beta_end) == (
            pytest.approx(0.00085), pytest.approx(0.012))
        assert model.scaling_factor == pytest.approx(0.18215)
        assert model.tokenizer.pad_token == ("!" if family == "sd2" else "<|endoftext|>")
        assert not model.unet.training
    assert_same_weights(folder, single)
    assert_same_weights(folder, ckpt)
    assert single.source == str(demos / arch / "model.safetensors")


def test_v_parameterization_overrides_detection(demos):
    assert not load_sd_model(str(demos / "sd2v" / "model.safetensors"), v_parameterization=False).v_prediction
    forced = load_sd_model(str(demos / "sd1" / "model"), v_parameterization=True)
    assert forced.v_prediction and forced.noise_scheduler.config.prediction_type == "v_prediction"
    assert forced.scheduler.config.prediction_type == "v_prediction"


def test_separate_vae_replaces_the_models(demos):
    model = load_sd_model(str(demos / "sd1" / "model.safetensors"), vae_path=str(demos / "sd2v" / "model" / "vae"))
    other = load_sd_model(str(demos / "sd2v" / "model"))
    assert_same_weights(model, other, ("vae",))


@pytest.mark.parametrize("arch", ["sd1", "sd2v"])
def test_save_both_formats_and_reload_exactly(demos, tmp_path, arch):
    from diffusers import StableDiffusionPipeline

    model = load_sd_model(str(demos / arch / "model.safetensors"))
    file = save_sd_model(model, tmp_path / "out.safetensors", "safetensors", "fp32", {"ss_seed": 7})
    folder = save_sd_model(model, tmp_path / "out", "diffusers", "fp32", {})
    assert (file, folder) == (tmp_path / "out.safetensors", tmp_path / "out")
    for path in (file, folder):
        again = load_sd_model(str(path))
        assert (again.arch, again.v_prediction) == (model.arch, model.v_prediction)
        assert type(again.scheduler) is type(model.scheduler)
        assert_same_weights(model, again)
    pipe = StableDiffusionPipeline.from_single_file(str(file), config=str(folder), local_files_only=True)
    assert_same_weights(model, pipe)
    assert pipe.scheduler.config.prediction_type == model.noise_scheduler.config.prediction_type
    with safe_open(file, "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_seed"] == "7" and metadata["modelspec.title"] == "out"
    assert metadata["modelspec.prediction_type"] == ("v" if arch == "sd2v" else "epsilon")
    assert json.loads(metadata[CONFIGS_KEY])["unet"]["block_out_channels"] == [32, 64]


def test_fp16_save_holds_fp16_tensors(demos, tmp_path):
    model = load_sd_model(str(demos / "sd1" / "model"))
    file = save_sd_model(model, tmp_path / "half.safetensors", "safetensors", "fp16", {})
    folder = save_sd_model(model, tmp_path / "half", "diffusers", "bf16", {})
    assert {t.dtype for t in load_file(file).values()} == {torch.float16}
    assert {t.dtype for t in load_file(folder / "unet" / "diffusion_pytorch_model.safetensors").values()} == {torch.bfloat16}
    again = load_sd_model(str(file))
    weight = model.unet.conv_in.weight
    assert again.unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(again.unet.conv_in.weight, weight.half().float())
    assert not torch.equal(again.unet.conv_in.weight, weight)
    with pytest.raises(ValueError, match="precision"):
        save_sd_model(model, tmp_path / "x.safetensors", "safetensors", "fp8", {})
    with pytest.raises(ValueError, match="save_model_as"):
        save_sd_model(model, tmp_path / "x.ckpt", "ckpt", "fp32", {})


def test_diffusers_save_is_swapped_in_atomically(demos, tmp_path, monkeypatch):
    model = load_sd_model(str(demos / "sd1" / "model"))
    target = save_sd_model(model, tmp_path / "m", "diffusers", "fp32", {})
    assert target.stat().st_mode & 0o777 == default_mode(folder=True)  # not mkdtemp's owner-only mode
    (target / "marker").write_text("first save")
    save_sd_model(model, target, "diffusers", "fp32", {})
    assert not (target / "marker").exists() and (target / "model_index.json").is_file()

    (target / "marker").write_text("kept")
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(type(model.vae), "save_config", crash)  # fails half way through
    with pytest.raises(RuntimeError, match="disk full"):
        save_sd_model(model, target, "diffusers", "fp32", {})
    monkeypatch.undo()
    assert (target / "marker").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

    # a crash between the two renames leaves the old folder under a hidden name: it is put back
    target.rename(tmp_path / ".m.old")
    (tmp_path / ".m.tmp-crashed").mkdir()
    save_sd_model(model, target, "diffusers", "fp32", {})
    assert not (target / "marker").exists()  # recovered, then replaced by the new save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    target.rename(tmp_path / ".m.old")
    recover_folder(target)
    assert (target / "model_index.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert_same_weights(model, load_sd_model(str(target)))


def test_bad_model_paths_give_clear_errors(demos, tmp_path):
    full = load_file(demos / "sd1" / "model.safetensors")
    cases = {
        "lora.safetensors": ({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2),
                              "lora_unet_down_blocks_0.alpha": torch.tensor(1.0)}, "LoRA"),
        "vae.safetensors": ({k.removeprefix("first_stage_model."): v for k, v in full.items()
                             if k.startswith("first_stage_model.")}, "VAE alone"),
        "text.safetensors": ({k: v for k, v in full.items() if k.startswith("cond_stage_model.")},
                             "no weights for the U-Net or the VAE"),
        "other.safetensors": ({"foo.weight": torch.zeros(1)}, "not a Stable Diffusion checkpoint"),
    }
    for name, (tensors, message) in cases.items():
        save_file(tensors, tmp_path / name)
        with pytest.raises(ValueError, match=message) as error:
            load_sd_model(str(tmp_path / name))
        assert name in str(error.value)
    data = (demos / "sd1" / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.ckpt").write_bytes(b"not a pickle at all")
    for name in ("cut.safetensors", "junk.ckpt"):
        with pytest.raises(ValueError, match="damaged") as error:
            load_sd_model(str(tmp_path / name))
        assert name in str(error.value)
    with pytest.raises(ValueError, match="not found"):
        load_sd_model(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="not a diffusers pipeline folder.*UNet2DConditionModel"):
        load_sd_model(str(demos / "sd1" / "model" / "unet"))
    wrong = dict(full)
    wrong["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(3, 3)
    save_file(wrong, tmp_path / "wrong.safetensors", metadata=safe_open(
        demos / "sd1" / "model.safetensors", "pt").metadata())
    with pytest.raises(ValueError, match="wrong.safetensors: the unet weights do not fit"):
        load_sd_model(str(tmp_path / "wrong.safetensors"))


def test_v_prediction_is_read_from_metadata_and_yaml(tmp_path):
    detect = sd_module.detect_v_prediction
    path = tmp_path / "m.safetensors"
    assert detect(path, {"modelspec.prediction_type": "v"}) is True
    assert detect(path, {"modelspec.architecture": "stable-diffusion-v2-768-v"}) is True
    assert detect(path, {"modelspec.prediction_type": "epsilon"}) is False
    assert detect(path, {}) is None
    (tmp_path / "m.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert detect(path, {}) is True


REAL = {  # shipped config -> (arch, numbers that must hold for the published model)
    "sd1": ("sd1", dict(cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False),
            dict(hidden_size=768, num_hidden_layers=12, hidden_act="quick_gelu")),
    "sd2-512": ("sd2", dict(cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                            use_linear_projection=True, sample_size=64),
                dict(hidden_size=1024, num_hidden_layers=23, hidden_act="gelu")),
    "sd2-768-v": ("sd2", dict(cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                              use_linear_projection=True, sample_size=96),
                  dict(hidden_size=1024, num_hidden_layers=23, hidden_act="gelu")),
    "sdxl-base": ("sdxl", dict(cross_attention_dim=2048, transformer_layers_per_block=[1, 2, 10],
                               addition_embed_type="text_time", sample_size=128),
                  dict(hidden_size=768, num_hidden_layers=12, hidden_act="quick_gelu")),
}
UNET_PARAMETERS = {"sd1": 859_520_964, "sd2": 865_910_724, "sdxl": 2_567_463_684}


@pytest.mark.parametrize("name", sorted(REAL))
def test_shipped_configs_convert_every_real_key_both_ways(name):
    arch, unet_numbers, text_numbers = REAL[name]
    v = name.endswith("-v")  # sd2-768-v
    configs = shipped_configs(arch, v)
    assert configs["scheduler"]["prediction_type"] == ("v_prediction" if v else "epsilon")
    assert (configs["scheduler"]["beta_start"], configs["scheduler"]["beta_end"]) == (0.00085, 0.012)
    parts = (*PARTS, "text_encoder_2") if arch == "sdxl" else PARTS
    models = {part: empty_model(part, configs[part]) for part in parts}
    for key, value in unet_numbers.items():
        assert models["unet"].config.get(key, False) == value, key
    for key, value in text_numbers.items():
        assert getattr(models["text_encoder"].config, key) == value, key
    state = to_ldm_state_dict(arch, *(models[part] for part in parts))  # ours: diffusers -> file
    if arch == "sd2":
        assert "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight" in state
    loaded = models_from_state(name, arch, state, configs)  # diffusers' functions: file -> models
    for part in parts:
        expected, got = models[part].state_dict(), loaded[part].state_dict()
        assert set(got) == set(expected), part
        assert all(got[k].shape == expected[k].shape for k in expected), part
    assert sum(p.numel() for p in loaded["unet"].parameters()) == UNET_PARAMETERS[arch]
