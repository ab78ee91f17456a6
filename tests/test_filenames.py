"""Names a user types are checked where they are declared: a model's output_name must be a usable file
stem everywhere, a caption extension must not be one that images or models have."""
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import CleanConfig, ConfigError, MergeLoraConfig, TagConfig, TrainConfig, validate
from core.filenames import MAX_STEM_BYTES, caption_extension_problem, file_stem_problem

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", [".", "..", "...", " ", "model.", "model ", "CON", "nul", "Com1", "lpt9.v2",
                                  "a/b", "a\\b", "a:b", "what?", "tab\there", "x" * (MAX_STEM_BYTES + 1)])
def test_unusable_output_names_are_refused_by_every_job_that_saves(name):
    assert file_stem_problem(name)
    base = {"pretrained_model_name_or_path": "m", "train_data_dir": ["d"], "output_dir": "out",
            "save_model_as": "diffusers"}
    with pytest.raises(ConfigError, match="output_name"):
        validate(TrainConfig, {**base, "output_name": name}, "test")
    with pytest.raises(ConfigError, match="output_name"):
        validate(MergeLoraConfig, {"pretrained_model_name_or_path": "m", "output_dir": "out", "lora_models": ["l"],
                                   "output_name": name}, "test")


@pytest.mark.parametrize("name", ["model", "my model v2", "v1.5-finetune", "アニメ", "console", "con-art",
                                  "x" * MAX_STEM_BYTES])
def test_usual_output_names_pass(name):
    assert file_stem_problem(name) is None


@pytest.mark.parametrize("extension", [".png", ".PNG", ".jpg", ".webp", ".avif", ".safetensors", ".ckpt", ".npz"])
def test_caption_extensions_of_images_or_models_are_refused(extension):
    assert caption_extension_problem(extension)
    for model in (CleanConfig, TagConfig):
        with pytest.raises(ConfigError, match="caption_extension"):
            validate(model, {"train_data_dir": ["d"], "caption_extension": extension}, "test")


@pytest.mark.parametrize("extension", [".txt", ".caption", ".tags"])
def test_usual_caption_extensions_pass(extension):
    assert caption_extension_problem(extension) is None


def test_clean_with_an_image_extension_leaves_the_images_alone(tmp_path, studio_home):
    """The reproduced failure: `clean` with caption_extension .png wrote text over the images."""
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    result = subprocess.run([sys.executable, "-m", "core", "clean", "--train_data_dir", str(tmp_path),
                             "--caption_extension", ".png", "--rules", "lowercase"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "caption_extension" in result.stdout + result.stderr
    assert (tmp_path / "a.png").read_bytes() == before
