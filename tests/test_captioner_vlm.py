"""Captions from vision-language models (job `vlm_caption`): the text written (openings removed, a cut end dropped,
the trigger word, WD14 tags joined), what each family is asked, and clear errors for folders and settings that
cannot run. The families end to end on tiny random models: tests/test_captioner_vlm_families.py."""
import json

import pytest

from core.captions.taggers.vlm import final_text, instruction, load_vlm, model_type_of, without_cut_end, without_opening
from core.captions.taggers.vlm_families import FAMILIES
from core.config import ConfigError, VlmCaptionConfig, validate


def cfg(**values) -> VlmCaptionConfig:
    return VlmCaptionConfig(**{"train_data_dir": ["/data"], "model_dir": "/models/vlm", **values})


@pytest.mark.parametrize("text, expected", [
    ("The image shows a red cat on a sofa.", "A red cat on a sofa."),
    ("In this image, a woman walks in a field.", "A woman walks in a field."),
    ("this photo depicts two dogs", "two dogs"),
    ("An image of a castle at night.", "A castle at night."),
    ("A photo of a lighthouse.", "A lighthouse."),
    ("The image is a watercolour painting.", "The image is a watercolour painting."),  # no opening to drop
    ("The image shows", "The image shows"),  # nothing after it: kept
])
def test_openings_are_removed(text, expected):
    assert without_opening(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("A red cat sits. It looks at the", "A red cat sits."),
    ("A red cat sits. It looks away.", "A red cat sits. It looks away."),
    ("1girl, solo, long hair, smi", "1girl, solo, long hair"),
    ("a cat on a sofa with", "a cat on a sofa with"),  # one unfinished sentence: kept rather than emptied
])
def test_a_text_cut_by_the_token_limit_loses_its_unfinished_end(text, expected):
    assert without_cut_end(text) == expected


def test_the_text_written_is_one_clean_line_with_the_trigger_and_the_tags():
    assert final_text(cfg(), "The image shows a cat.\n\nIt  sleeps. And", cut=True) == "A cat. It sleeps."
    assert final_text(cfg(), "The image shows a cat. And", cut=False) == "A cat. And"
    assert final_text(cfg(clean_output=False), "The image shows a cat. And", cut=True) == \
        "The image shows a cat. And"
    assert final_text(cfg(trigger_word="ohwx"), "A cat.", cut=False) == "ohwx, A cat."
    assert final_text(cfg(trigger_word="ohwx"), "Ohwx sleeps.", cut=False) == "Ohwx sleeps."
    tags = ["1girl", "red hair"]
    assert final_text(cfg(wd14_model_dir="/t"), "A woman.", False, tags) == "1girl, red hair, A woman."
    assert final_text(cfg(wd14_model_dir="/t", wd14_position="after"), "A woman.", False, tags) == \
        "A woman. 1girl, red hair"
    assert final_text(cfg(wd14_model_dir="/t", wd14_position="after"), "1boy, hat", False, tags) == \
        "1boy, hat, 1girl, red hair"


def test_each_family_is_asked_its_own_way():
    florence, qwen = FAMILIES["florence2"], FAMILIES["qwen2_5_vl"]
    assert instruction(cfg(prompt_preset="detailed"), florence) == "<MORE_DETAILED_CAPTION>"
    assert instruction(cfg(prompt_preset="short"), florence) == "<CAPTION>"
    assert instruction(cfg(prompt_preset="custom", prompt="<OCR>"), florence) == "<OCR>"
    with pytest.raises(ValueError, match="Florence-2 answers task tokens.*<MORE_DETAILED_CAPTION>"):
        instruction(cfg(prompt_preset="tags"), florence)
    asked = instruction(cfg(prompt_preset="tags", trigger_word="ohwx"), qwen)
    assert "booru-style tags" in asked and '"ohwx"' in asked
    assert instruction(cfg(prompt_preset="custom", prompt=" Describe the light. "), qwen) == "Describe the light."


def test_a_custom_prompt_must_be_written():
    with pytest.raises(ConfigError, match="prompt_preset is custom"):
        validate(VlmCaptionConfig, {"train_data_dir": ["/d"], "model_dir": "/m", "prompt_preset": "custom"}, "test")


def test_folders_that_hold_no_supported_model_are_named(tmp_path):
    with pytest.raises(ValueError, match="model folder not found"):
        model_type_of(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable config.json"):
        model_type_of(tmp_path / "empty")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    with pytest.raises(ValueError, match="holds a bert model") as error:
        model_type_of(tmp_path / "bert")
    assert all(key in str(error.value) for key in FAMILIES) and str(tmp_path / "bert") in str(error.value)
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}), encoding="utf-8")
    assert model_type_of(tmp_path / "qwen") == "qwen2_5_vl"
    with pytest.raises(ValueError, match="cannot load the model") as error:  # a config without weights
        load_vlm(str(tmp_path / "qwen"))
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in str(error.value)


def test_quantization_needs_a_gpu(tmp_path):
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}), encoding="utf-8")
    with pytest.raises(ValueError, match="quantization 8bit .* needs an NVIDIA GPU"):
        load_vlm(str(tmp_path / "qwen"), quantization="8bit")
