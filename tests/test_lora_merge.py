"""The merge_lora job: LoRA files (kohya, sd-scripts SDXL names, diffusers) added into a base model at
their ratios, saved as a new model that computes what the model with the adapters computes; bad files
and an existing output are refused before anything is written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.config import MergeLoraConfig
from core.config.schema import ConfigError, validate
from core.jobs.protocol import JobContext, JobStopped
from core.models.lora import add_lora, load_lora_kohya, merge_lora_into, save_lora
from core.models.lora_merge import run as run_merge
from core.models.sd import load_sd_model
from core.train.trainable import text_encoder_parts

RANK, ALPHA = 4, 2.0


def model_parts(model) -> dict:
    return {part: getattr(model, part) for part in ("unet", *text_encoder_parts(model))}


def unet_out(unet) -> torch.Tensor:
    config = unet.config
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 16, 16, generator=g)
    context = torch.randn(1, 8, config.cross_attention_dim, generator=g)
    extra = {}
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                      "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context, **extra).sample


def te_outs(model) -> list[torch.Tensor]:
    ids = torch.tensor([[49406, 320, 1125, 539, 49407]])
    with torch.no_grad():
        return [getattr(model, part)(ids, output_hidden_states=True).hidden_states[-2]
                for part in text_encoder_parts(model)]


def lora_model(base: Path, seed: int, targets: str = "all_linear_conv"):
    """The base model with random adapters on the U-Net and every text encoder."""
    model = load_sd_model(str(base))
    add_lora(model_parts(model), rank=RANK, alpha=ALPHA, targets=targets)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model_parts(model).values():
            for name, param in module.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=g) * 0.2)
    return model


def merge(base: Path, loras: list[Path], out: Path, run_dir: Path, ctx_type=JobContext, **values) -> dict:
    cfg = MergeLoraConfig(pretrained_model_name_or_path=str(base), lora_models=[str(p) for p in loras],
                          output_dir=str(out), output_name="merged", save_precision="fp32", **values)
    with ctx_type(run_dir, echo=False) as ctx:
        return run_merge(cfg, ctx)


@pytest.fixture(scope="module")
def sd1(demo_kit) -> Path:
    return demo_kit("sd1", 4, 0) / "model"


@pytest.fixture(scope="module")
def sdxl(demo_kit) -> Path:
    return demo_kit("sdxl", 4, 0) / "model"


def test_merged_model_computes_what_the_adapters_compute(sd1, tmp_path):
    adapted = lora_model(sd1, seed=0)
    lora = save_lora(tmp_path / "subject.safetensors", model_parts(adapted))
    result = merge(sd1, [lora], tmp_path / "out", tmp_path / "run")

    output = tmp_path / "out" / "merged.safetensors"
    assert result["model"] == str(output) and result["arch"] == "sd1"
    assert result["merged"][0]["ratio"] == 1.0 and result["merged"][0]["modules"] > 0
    merged, base = load_sd_model(str(output)), load_sd_model(str(sd1))
    assert not torch.allclose(unet_out(base.unet), unet_out(adapted.unet), atol=1e-3)
    torch.testing.assert_close(unet_out(merged.unet), unet_out(adapted.unet), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(te_outs(merged), te_outs(adapted), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged.vae.state_dict(), base.vae.state_dict())
    from safetensors import safe_open

    with safe_open(str(output), framework="pt") as f:
        assert json.loads(f.metadata()["studio.merged_loras"])[0]["file"] == str(lora)


def test_ratios_scale_each_lora_in_order(sd1, tmp_path):
    first = save_lora(tmp_path / "a.safetensors", model_parts(lora_model(sd1, seed=1)))
    second = save_lora(tmp_path / "b.safetensors", model_parts(lora_model(sd1, seed=2, targets="attention")))
    merge(sd1, [first, second], tmp_path / "out", tmp_path / "run", ratios=[0.5, -1.0])
    merged, base = load_sd_model(str(tmp_path / "out" / "merged.safetensors")), load_sd_model(str(sd1))

    expected = load_sd_model(str(sd1))
    merge_lora_into(model_parts(expected), load_lora_kohya(first)[0], 0.5)
    merge_lora_into(model_parts(expected), load_lora_kohya(second)[0], -1.0)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert not torch.equal(expected.unet.state_dict()[key], base.unet.state_dict()[key])
    torch.testing.assert_close(merged.unet.state_dict(), expected.unet.state_dict())
    torch.testing.assert_close(merged.text_encoder.state_dict(), expected.text_encoder.state_dict())


def test_sdxl_diffusers_and_sd_scripts_files_merge_into_both_text_encoders(sdxl, tmp_path):
    adapted = lora_model(sdxl, seed=3, targets="attention_mlp")
    kohya = save_lora(tmp_path / "kohya.safetensors", model_parts(adapted), sdxl=True)
    save_lora(tmp_path / "diffusers.safetensors", model_parts(adapted), sdxl=True, fmt="diffusers")
    # sd-scripts names SDXL U-Net modules by the original layout (input_blocks / middle_block / output_blocks);
    # for this U-Net (2 levels, 2 layers each, attention in the second level): written out by hand.
    renames = {"lora_unet_down_blocks_1_attentions_0_": "lora_unet_input_blocks_4_1_",
               "lora_unet_down_blocks_1_attentions_1_": "lora_unet_input_blocks_5_1_",
               "lora_unet_mid_block_attentions_0_": "lora_unet_middle_block_1_",
               **{f"lora_unet_up_blocks_0_attentions_{j}_": f"lora_unet_output_blocks_{j}_1_" for j in range(3)}}
    state_dict, metadata = load_lora_kohya(kohya)
    sd_scripts = {}
    for key, value in state_dict.items():
        for old, new in renames.items():
            key = key.replace(old, new) if key.startswith(old) else key
        sd_scripts[key] = value
    assert not any("down_blocks" in k or "up_blocks" in k or "mid_block" in k for k in sd_scripts)
    assert any(k.startswith("lora_te1_") for k in sd_scripts) and any(k.startswith("lora_te2_") for k in sd_scripts)
    from safetensors.torch import save_file
    save_file(sd_scripts, str(tmp_path / "sd-scripts.safetensors"), metadata=metadata)

    outputs = {}
    for name in ("kohya", "diffusers", "sd-scripts"):
        merge(sdxl, [tmp_path / f"{name}.safetensors"], tmp_path / name, tmp_path / f"run-{name}")
        outputs[name] = load_sd_model(str(tmp_path / name / "merged.safetensors"))
    base = load_sd_model(str(sdxl))
    assert outputs["kohya"].arch == "sdxl"
    for part in ("text_encoder", "text_encoder_2"):
        assert not torch.allclose(te_outs(base)[part == "text_encoder_2"], te_outs(adapted)[part == "text_encoder_2"])
    for merged in outputs.values():
        torch.testing.assert_close(unet_out(merged.unet), unet_out(adapted.unet), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(te_outs(merged), te_outs(adapted), atol=1e-4, rtol=1e-4)


def test_diffusers_folder_output(sd1, tmp_path):
    lora = save_lora(tmp_path / "a.safetensors", model_parts(lora_model(sd1, seed=4)))
    result = merge(sd1, [lora], tmp_path / "out", tmp_path / "run", save_model_as="diffusers")
    assert result["model"] == str(tmp_path / "out" / "merged")
    assert (tmp_path / "out" / "merged" / "model_index.json").is_file()
    assert load_sd_model(result["model"]).arch == "sd1"


def test_an_existing_output_is_never_replaced(sd1, tmp_path):
    lora = save_lora(tmp_path / "a.safetensors", model_parts(lora_model(sd1, seed=5)))
    output = tmp_path / "out" / "merged.safetensors"
    output.parent.mkdir()
    output.write_bytes(b"the user's model")
    with pytest.raises(ValueError, match="exists already"):
        merge(sd1, [lora], tmp_path / "out", tmp_path / "run")
    assert output.read_bytes() == b"the user's model"


@pytest.mark.parametrize("make, message", [
    (lambda p: _write(p.with_suffix(".pt"), b"x"), "only .safetensors"),
    (lambda p: p, "no such LoRA file"),
    (lambda p: _write(p, b"not safetensors"), "not a readable .safetensors"),
    (lambda p: _save(p, {"lora_unet_x.hada_w1_a": torch.zeros(2, 2), "lora_unet_x.hada_w1_b": torch.zeros(2, 2)}),
     "1 of 1 LyCORIS modules match no module of the model .*lora_unet_x"),
    (lambda p: _save(p, {"model.diffusion_model.out.2.weight": torch.zeros(2)}), "not a LoRA file"),
    (lambda p: _save(p, {"lora_unet_no_such_block.lora_down.weight": torch.zeros(RANK, 32),
                         "lora_unet_no_such_block.lora_up.weight": torch.zeros(32, RANK)}),
     "1 of 1 LoRA modules match no module of the model .*lora_unet_no_such_block"),
])
def test_bad_lora_files_are_refused_naming_the_file(sd1, tmp_path, make, message):
    path = make(tmp_path / "bad lora.safetensors")
    with pytest.raises(ValueError, match=message) as err:
        merge(sd1, [path], tmp_path / "out", tmp_path / "run")
    assert str(path) in str(err.value)
    assert not (tmp_path / "out").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return path


def test_an_sdxl_lora_on_an_sd1_model_is_refused(sd1, sdxl, tmp_path):
    lora = save_lora(tmp_path / "xl.safetensors", model_parts(lora_model(sdxl, seed=6)), sdxl=True)
    with pytest.raises(ValueError, match="another architecture"):
        merge(sd1, [lora], tmp_path / "out", tmp_path / "run")
    assert not (tmp_path / "out").exists()


class StopAfterTheFirstLora(JobContext):
    def progress(self, step, total):
        super().progress(step, total)
        if step >= 2:
            self.run.request_stop()


def test_stopping_writes_nothing(sd1, tmp_path):
    lora = save_lora(tmp_path / "a.safetensors", model_parts(lora_model(sd1, seed=7)))
    with pytest.raises(JobStopped):
        merge(sd1, [lora, lora], tmp_path / "out", tmp_path / "run", ctx_type=StopAfterTheFirstLora)
    assert not (tmp_path / "out" / "merged.safetensors").exists()


def test_config_checks_the_ratios_and_files():
    def check(**values):
        return validate(MergeLoraConfig, {"pretrained_model_name_or_path": "m", "output_dir": "o", **values}, "form")

    with pytest.raises(ConfigError, match="ratios: 1 given for 2 LoRA file"):
        check(lora_models=["a.safetensors", "b.safetensors"], ratios=[0.5])
    with pytest.raises(ConfigError, match="give at least one LoRA file"):
        check(lora_models=[" "])
    assert check(lora_models=["a.safetensors", "b.safetensors"]).multipliers() == [1.0, 1.0]
    assert check(lora_models=["a.safetensors"], ratios=["0.7"]).multipliers() == [0.7]  # as the form sends


def test_command_line(sd1, tmp_path, studio_home):
    lora = save_lora(tmp_path / "my lora é.safetensors", model_parts(lora_model(sd1, seed=8)))
    out = tmp_path / "out dir"
    proc = subprocess.run(
        [sys.executable, "-m", "core", "merge_lora", "--pretrained_model_name_or_path", str(sd1),
         "--lora_models", str(lora), str(lora), "--ratios", "0.5", "0.25", "--output_dir", str(out),
         "--output_name", "twice", "--save_precision", "fp16"],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300,
        env={**os.environ, "STUDIO_HOME": str(studio_home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "merged at ratio 0.5" in proc.stdout and "merged at ratio 0.25" in proc.stdout
    merged = load_sd_model(str(out / "twice.safetensors"))
    reference = load_sd_model(str(sd1))  # 0.5 + 0.25 of the same adapters, saved in fp16
    merge_lora_into(model_parts(reference), load_lora_kohya(lora)[0], 0.75)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    torch.testing.assert_close(merged.unet.state_dict()[key], reference.unet.state_dict()[key].half().float())
