"""The Captioning tab's functions: preview errors and the summary of a finished run."""
import json

from tabs.captioning import preview, run_summary


def test_summary_counts_and_failed_paths(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({
        "images": 5, "written": 2, "skipped": 1, "unchanged": 0, "failed": 2,
        "failed_paths": ["/d/bad one.png", "/d/empty.png"]}))
    text = run_summary(str(tmp_path))
    assert text.startswith("5 images: written **2** · skipped **1** · unchanged **0** · failed **2**")
    assert "- `/d/bad one.png`" in text and "- `/d/empty.png`" in text
    assert "did not finish" in run_summary(str(tmp_path / "missing"))
    assert run_summary(None) == ""


def test_preview_reports_bad_settings_instead_of_failing(tmp_path):
    items, message = preview("tag", {"train_data_dir": [str(tmp_path)], "model_dir": ""})
    assert items == [] and message.startswith("**No preview:**") and "model_dir" in message
    items, message = preview("caption", {"train_data_dir": [str(tmp_path)], "model_dir": str(tmp_path / "nope")})
    assert items == [] and "No preview" in message


def test_caption_lengths_must_be_ordered(tmp_path):
    import pytest

    from core.config import BlipCaptionConfig, ConfigError, validate

    with pytest.raises(ConfigError, match="min_length"):
        validate(BlipCaptionConfig, {"train_data_dir": [str(tmp_path)], "model_dir": "m", "min_length": 80,
                                     "max_length": 20}, "test")
