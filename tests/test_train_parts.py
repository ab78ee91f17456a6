"""What a run trains (U-Net, text encoder, block groups, stopping the text encoder), EMA, full
fp16/bf16, cached text-encoder outputs, and the checks that refuse incompatible options."""
import json

import pytest
import torch
from safetensors.torch import load_file
from trainkit import train, train_values

from core.config import ConfigError, TrainConfig, validate
from core.config.models import PromptSettings
from core.config.presets import read_values_file
from core.models.sd import BaseModelKind
from core.train import step
from core.train.conditioning import PromptEncoder, static_captions
from core.train.ema import EMA, ema_decay_at
from core.train.start_checks import model_kind_problems
from core.train.trainable import (
    param_groups,
    set_trainable,
    text_encoder_parameters,
    text_encoder_rates,
    text_encoder_stop_step,
    unet_parameters,
)

UNET = "model.diffusion_model."
TEXT = "cond_stage_model."


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


def fresh_model(kit):
    from core.models.sd import load_sd_model

    return load_sd_model(str(kit / "model"))


def names_with_grad(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def all_names(module: torch.nn.Module, prefixes: tuple[str, ...] = ("",)) -> set[str]:
    return {n for n, _ in module.named_parameters() if n.startswith(prefixes)}


@pytest.mark.parametrize("train_unet, train_te, blocks, clip_skip", [
    (True, False, [], 1), (True, True, [], 1), (False, True, [], 1), (True, False, ["mid"], 1),
    (True, False, ["down", "up"], 1), (True, True, [], 2)])
def test_exactly_the_trained_parameters_receive_gradients(kit, train_unet, train_te, blocks, clip_skip):
    model = fresh_model(kit)
    trained = set_trainable(model, train_unet, ["text_encoder"] if train_te else [], blocks, clip_skip)
    cfg = validate(TrainConfig, train_values(kit, kit / "unused", clip_skip=clip_skip), "test")
    prompts = PromptEncoder(model, cfg, torch.device("cpu"), trains=train_te)
    batch = {"latents": torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)),
             "captions": ["a red circle", "a blue square"]}
    torch.manual_seed(0)
    step.loss_of_batch(batch, model, model.unet, prompts, cfg, torch.float32, torch.device("cpu")).backward()

    prefixes = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
    expected_unet = all_names(model.unet, tuple(prefixes[b] for b in blocks) or ("",)) if train_unet else set()
    last_layer = f"encoder.layers.{len(model.text_encoder.encoder.layers) - 1}."
    expected_te = ({n for n in all_names(model.text_encoder) if clip_skip == 1 or not n.startswith(last_layer)}
                   if train_te else set())
    assert names_with_grad(model.unet) == expected_unet
    assert names_with_grad(model.text_encoder) == expected_te
    assert not names_with_grad(model.vae)
    assert sum(len(v) for v in trained.values()) == len(expected_unet) + len(expected_te)


def test_param_groups_give_the_text_encoder_its_own_rate(kit):
    model = fresh_model(kit)
    groups = param_groups({"unet": unet_parameters(model.unet, []),
                           "text_encoder": text_encoder_parameters(model.text_encoder, 1)}, 1e-4,
                          {"text_encoder": 1e-6})
    assert [g["lr"] for g in groups] == [1e-4, 1e-6]
    with pytest.raises(ValueError, match="unknown U-Net block group"):
        unet_parameters(model.unet, ["middle"])


def test_text_encoder_stop_step_in_steps_or_fraction():
    assert text_encoder_stop_step(0, 100) is None
    assert text_encoder_stop_step(0.25, 100) == 25
    assert text_encoder_stop_step(30, 100) == 30
    assert text_encoder_stop_step(100, 100) is None  # trains to the end anyway


def changed_keys(base: dict, trained: dict, prefix: str) -> set[str]:
    return {k for k in base if k.startswith(prefix) and not torch.equal(base[k], trained[k])}


@pytest.mark.parametrize("overrides, unet_changes, te_changes", [
    ({"train_text_encoder": True, "learning_rate_te": 1e-3}, "all", True),
    ({"train_unet": False, "train_text_encoder": True}, "none", True),
    ({"unet_blocks": ["mid"]}, "middle_block", False),
])
def test_training_modes_change_only_what_they_train(kit, tmp_path, overrides, unet_changes, te_changes):
    train(train_values(kit, tmp_path / "out", max_train_steps=2, **overrides), tmp_path / "run")
    base, trained = load_file(str(kit / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    unet_changed = changed_keys(base, trained, UNET)
    if unet_changes == "none":
        assert not unet_changed
    elif unet_changes == "all":
        assert len(unet_changed) > 0.9 * len([k for k in base if k.startswith(UNET)])
    else:
        assert unet_changed and all(k.startswith(UNET + unet_changes) for k in unet_changed)
    assert bool(changed_keys(base, trained, TEXT)) == te_changes
    assert not changed_keys(base, trained, "first_stage_model.")


def test_a_v1_run_config_with_learning_rate_te_0_trains_the_text_encoder_at_learning_rate(kit, tmp_path):
    """Schema version 1 read learning_rate_te 0 as "same as learning_rate"; version 2 spells it empty."""
    values = {**train_values(kit, tmp_path / "out", max_train_steps=2), "train_text_encoder": True,
              "learning_rate_te": 0}
    old = tmp_path / "config.json"
    old.write_text(json.dumps({"schema_version": 1, "job": "train", "values": values}))
    migrated = read_values_file(old, "train")
    assert migrated["learning_rate_te"] is None
    cfg = validate(TrainConfig, migrated, "test")
    model = fresh_model(kit)
    trained = set_trainable(model, True, list(text_encoder_rates(model, cfg)), [], 1)
    assert [g["lr"] for g in param_groups(trained, cfg.learning_rate, text_encoder_rates(model, cfg))] == [
        cfg.learning_rate, cfg.learning_rate]
    train(migrated, tmp_path / "run")
    base, after = load_file(str(kit / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    assert changed_keys(base, after, TEXT)
    with pytest.raises(ConfigError, match="turn off train_text_encoder"):  # version 2: 0 freezes it
        validate(TrainConfig, values, "test")


@pytest.mark.parametrize("rates, arch, expected", [
    ({}, "sd1", {"text_encoder": 1e-4}),
    ({"learning_rate_te": 1e-6}, "sd1", {"text_encoder": 1e-6}),
    ({"learning_rate_te": 0, "learning_rate_te1": 1e-5}, "sd1", {}),
    ({}, "sdxl", {"text_encoder": 1e-4, "text_encoder_2": 1e-4}),
    ({"learning_rate_te": 1e-6, "learning_rate_te2": 0}, "sdxl", {"text_encoder": 1e-6}),
    ({"learning_rate_te": 0, "learning_rate_te1": 1e-5}, "sdxl", {"text_encoder": 1e-5}),
])
def test_text_encoder_rates_empty_is_the_rate_above_and_0_freezes(kit, rates, arch, expected):
    cfg = validate(TrainConfig, train_values(kit, kit / "unused", train_text_encoder=True, learning_rate=1e-4,
                                             **rates), "test")
    assert cfg.text_encoder_rates(arch) == expected
    frozen = [p for p in model_kind_problems(cfg, BaseModelKind(arch, False)) if p.field == "learning_rate_te"]
    assert bool(frozen) != bool(expected)


def test_stop_text_encoder_training_freezes_it_from_that_step(kit, tmp_path):
    out = tmp_path / "out"
    train(train_values(kit, out, max_train_steps=4, train_text_encoder=True, stop_text_encoder_training=0.5,
                       save_every_n_steps=1), tmp_path / "run")
    te = [{k: v for k, v in load_file(str(out / name)).items() if k.startswith(TEXT)}
          for name in ("model-step00000001.safetensors", "model-step00000002.safetensors", "model.safetensors")]
    assert any(not torch.equal(te[0][k], te[1][k]) for k in te[0])  # trained up to step 2
    assert all(torch.equal(te[1][k], te[2][k]) for k in te[1])      # frozen after it
    assert "text encoder frozen from step 2" in (tmp_path / "run" / "log.txt").read_text()


def test_ema_decay_warms_up_to_the_configured_decay():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 10) == pytest.approx(11 / 20)
    assert ema_decay_at(0.9, 1000) == 0.9


def test_ema_update_interval_swap_and_state_exact():
    param = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
    ema = EMA([param], decay=0.5, update_every=2)
    with torch.no_grad():
        param.copy_(torch.tensor([2.0, 3.0]))
    ema.step(1)  # not due
    assert torch.equal(ema.shadow[0], torch.tensor([0.0, 1.0]))
    ema.step(2)  # decay 0.1: 0.1 * old + 0.9 * new
    assert torch.allclose(ema.shadow[0], torch.tensor([1.8, 2.8]))
    with ema.swapped_in():
        assert torch.allclose(param, torch.tensor([1.8, 2.8]))
    assert torch.equal(param.detach(), torch.tensor([2.0, 3.0]))
    other = EMA([torch.nn.Parameter(torch.zeros(2))], decay=0.5, update_every=2)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow[0], ema.shadow[0]) and other.num_updates == 1
    with pytest.raises(ValueError, match="EMA state holds 1 tensors"):
        EMA([], 0.5).load_state_dict(ema.state_dict())


def test_ema_saved_alongside_and_resumes_exactly(kit, tmp_path):
    ema = {"use_ema": True, "ema_decay": 0.9}
    ref = tmp_path / "ref"
    train(train_values(kit, ref, max_train_steps=4, save_every_n_steps=2, save_state=True, **ema), tmp_path / "r1")
    raw, averaged = load_file(str(ref / "model.safetensors")), load_file(str(ref / "model-ema.safetensors"))
    assert changed_keys(raw, averaged, UNET)
    assert (ref / "model-step00000002-ema.safetensors").is_file()
    resumed = tmp_path / "resumed"
    train(train_values(kit, resumed, max_train_steps=4, resume=str(ref / "model-step00000002-state"), **ema),
          tmp_path / "r2")
    again = load_file(str(resumed / "model-ema.safetensors"))
    assert not changed_keys(averaged, again, UNET)


def test_ema_saved_instead_replaces_the_raw_weights(kit, tmp_path):
    train(train_values(kit, tmp_path / "out", max_train_steps=2, use_ema=True, ema_save="instead",
                       ema_on_cpu=True), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_full_half_precision_trains_the_weights_in_that_dtype(kit, tmp_path, monkeypatch, precision):
    from core.train import loop

    seen = {}
    place = loop.place_modules

    def spy(model, cfg, trained, device, dtype):
        place(model, cfg, trained, device, dtype)
        seen.update(unet=model.unet.dtype, text_encoder=model.text_encoder.dtype)

    monkeypatch.setattr(loop, "place_modules", spy)
    result = train(train_values(kit, tmp_path / "out", max_train_steps=2, mixed_precision=precision,
                                train_text_encoder=True, **{f"full_{precision}": True}), tmp_path / "run")
    assert result["steps"] == 2
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert seen == {"unet": dtype, "text_encoder": dtype}


def test_static_captions_include_prefix_suffix_and_the_empty_caption():
    assert static_captions(["b, c", "a"], "pre", "", with_empty=True) == ["", "pre a", "pre b, c"]
    assert static_captions(["a", "a"], "", "post", with_empty=False) == ["a post"]


def test_cached_text_encoder_outputs_train_like_encoding_each_step(kit, tmp_path):
    values = {"max_train_steps": 3, "caption_prefix": "photo of"}
    train(train_values(kit, tmp_path / "a", **values), tmp_path / "ra")
    train(train_values(kit, tmp_path / "b", cache_text_encoder_outputs=True, **values), tmp_path / "rb")
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert "cached text-encoder outputs of" in (tmp_path / "rb" / "log.txt").read_text()


def test_cache_serves_caption_dropout_with_the_empty_caption(kit):
    model = fresh_model(kit)
    prompts = PromptEncoder(model, PromptSettings(), torch.device("cpu")).with_cache(
        static_captions(["a red circle"], "", "", with_empty=True), torch.float32)
    assert torch.equal(prompts([""])[0], prompts.encode([""])[0])
    with pytest.raises(KeyError, match="not in the text-encoder cache"):
        prompts(["a blue square"])


@pytest.mark.parametrize("overrides, message", [
    ({"train_unet": False}, "nothing to train"),
    ({"train_unet": False, "train_text_encoder": True, "unet_blocks": ["mid"]}, "train_unet is off"),
    ({"stop_text_encoder_training": 10}, "stop_text_encoder_training needs train_text_encoder"),
    ({"full_fp16": True}, "full_fp16 needs mixed_precision fp16"),
    ({"full_bf16": True, "full_fp16": True, "mixed_precision": "bf16"}, "cannot be used together"),
    ({"cache_text_encoder_outputs": True, "shuffle_caption": True}, "turn off shuffle_caption"),
    ({"cache_text_encoder_outputs": True, "caption_tag_dropout_rate": 0.1}, "turn off caption_tag_dropout_rate"),
    ({"cache_text_encoder_outputs": True, "train_text_encoder": True}, "turn off train_text_encoder"),
    ({"validate_every_n_steps": 5}, "need validation images"),
    ({"validation_split": 0.2, "auto_stop": True}, "auto_stop needs a validation loss"),
    ({"validation_split": 0.2, "validation_data_dir": "/x"}, "not both"),
    ({"sample_every_n_steps": 5}, "sample_prompts"),
    ({"unet_blocks": ["middle"]}, "unet_blocks"),
])
def test_incompatible_options_are_refused_with_a_clear_message(kit, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(TrainConfig, train_values(kit, tmp_path / "out", **overrides), "test")



def test_an_xformers_that_cannot_run_on_the_gpu_falls_back_to_sdpa(monkeypatch):
    """PyPI's xformers is built for new GPUs: on a GTX 10xx its first attention fails; training goes on."""
    import importlib.util
    from types import SimpleNamespace

    from core.train import loop

    calls = []

    class Unet:
        def enable_xformers_memory_efficient_attention(self):
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nsecond line")

        def set_default_attn_processor(self):
            calls.append("sdpa")

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: name == "xformers" or None)
    message = loop.use_xformers(Unet(), SimpleNamespace(type="cuda"))
    assert message.startswith("xformers cannot run on this GPU (RuntimeError: CUDA error: no kernel image")
    assert "second line" not in message and calls == ["sdpa"]
    assert loop.use_xformers(Unet(), SimpleNamespace(type="cpu")) is None
