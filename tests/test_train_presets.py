"""The built-in training presets: each validates and runs (on the tiny demo models, on the CPU), and the
diff of form values against a preset."""
import json
from pathlib import Path

import pytest

from core.config import TrainConfig, validate
from core.presets import builtin_dir, differences, find_preset, list_presets
from trainkit import events, train

PRESETS = sorted(p.stem for p in (builtin_dir() / "train").glob("*.json"))
SHRINK = {"max_train_steps": 2, "max_resolution": "128,128", "min_bucket_reso": 64, "max_bucket_reso": 256,
          "train_batch_size": 2, "save_every_n_steps": 0, "sample_every_n_steps": 0, "validate_every_n_steps": 0}


def preset_values(stem: str) -> dict:
    return json.loads((builtin_dir() / "train" / f"{stem}.json").read_text(encoding="utf-8"))["values"]


def test_every_builtin_preset_loads():
    found, errors = list_presets("train")
    assert not errors
    assert len([p for p in found if p.builtin]) == len(PRESETS) >= 4


@pytest.mark.parametrize("stem", PRESETS)
def test_builtin_preset_validates_and_runs_on_a_tiny_model(stem, demo_kit, tmp_path):
    values = preset_values(stem)
    kit = demo_kit("sd2v" if values.get("v_parameterization") else "sd1", 6, 0)
    paths = {"pretrained_model_name_or_path": str(kit / "model"), "train_data_dir": [str(kit / "dataset")],
             "output_dir": str(tmp_path / "out")}
    validate(TrainConfig, {**values, **paths}, stem)
    result = train({**values, **paths, **SHRINK}, tmp_path / "run")
    assert result["steps"] == 2


def test_cpu_demo_preset_runs_as_shipped(demo_kit, tmp_path, monkeypatch):
    """Only the demo kit's location differs (the preset expects it in ./demo, as `python -m core demo` makes)."""
    kit = demo_kit("sd1", 24, 0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").symlink_to(kit, target_is_directory=True)
    prompts = Path(__file__).resolve().parent.parent / "presets" / "train" / "demo-prompts.txt"
    values = {**preset_values("cpu-demo"), "sample_prompts": str(prompts), "output_dir": str(tmp_path / "out")}
    result = train(values, tmp_path / "run")
    assert result["steps"] == 60
    evs = events(tmp_path / "run")
    assert len([e for e in evs if e["event"] == "image"]) == 2 * 3  # steps 20, 40 and the end
    assert [e["step"] for e in evs if e["event"] == "metric" and e["name"] == "val_loss"] == [20, 40, 60]
    assert (tmp_path / "out" / "demo-finetune.safetensors").is_file()


def test_differences_against_a_preset_and_the_defaults():
    preset = find_preset("train", "CPU demo (tiny model, about a minute)")
    values = {**preset.values, "learning_rate": 1e-4, "max_train_steps": 60}
    assert differences("train", values, preset.values) == {"learning_rate": (0.0005, 1e-4)}
    from_defaults = differences("train", {"learning_rate": 1e-4}, {})
    assert from_defaults == {"learning_rate": (2e-6, 1e-4)}
    assert differences("train", {"unet_blocks": ["mid"]}, {"unet_blocks": ["mid"]}) == {}


def test_changes_markdown_names_the_preset_and_each_change():
    from tabs.training import changes_markdown

    preset = find_preset("train", "CPU demo (tiny model, about a minute)")
    assert changes_markdown(preset.name, dict(preset.values)) == f"Same as preset **{preset.name}**."
    text = changes_markdown(preset.name, {**preset.values, "seed": 1})
    assert "1 setting(s) differ" in text and "<code>seed</code>" in text and "<td>42</td>" in text
    assert "the defaults" in changes_markdown(None, {"seed": 1})
