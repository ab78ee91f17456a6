"""The class_images job on the tiny demo model: only the missing images are generated, names go on
after the existing class files, a stopped run continues to exactly the uninterrupted result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import ClassImagesConfig
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder
from core.train.class_images import next_class_index
from core.train.class_images import run as run_class_images

PROMPT = "a photo of a dog"


@pytest.fixture(scope="module")
def model(demo_kit) -> Path:
    return demo_kit("sd1", 6, 0) / "model"


def make_cfg(model: Path, folder: Path, **overrides) -> ClassImagesConfig:
    values = dict(pretrained_model_name_or_path=str(model), class_data_dir=str(folder), class_prompt=PROMPT,
                  negative_prompt="blurry", num_class_images=5, resolution="64,64", sample_steps=2, batch_size=2)
    return ClassImagesConfig(**{**values, **overrides})


def run_job(cfg: ClassImagesConfig, run_dir: Path, ctx_type=JobContext) -> dict:
    with ctx_type(run_dir, echo=False) as ctx:
        return run_class_images(cfg, ctx)


class StopAfterFirstBatch(JobContext):
    """A job context whose STOP file appears once the first batch (2 images) is written."""

    def progress(self, step, total):
        super().progress(step, total)
        if step >= 2:
            self.run.request_stop()


def class_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("class-")}


def test_next_class_index():
    assert next_class_index([]) == 0
    assert next_class_index(["a/dog.png", "class-00003.jpg", "class-7.png", "class-x.png"]) == 8


def test_generates_the_missing_images_after_the_existing_ones(model, tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    Image.new("RGB", (80, 48), "red").save(folder / "dog.jpg")
    Image.new("RGB", (64, 64), "blue").save(folder / "class-00003.png")
    before = class_files(folder)
    result = run_job(make_cfg(model, folder), tmp_path / "run")
    assert result == {"existing": 2, "generated": 3, "total": 5, "complete": True}
    new = [f"class-{i:05d}" for i in (4, 5, 6)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["dog.jpg", "class-00003.png"] + [n + ext for n in new for ext in (".png", ".txt")])
    assert class_files(folder)["class-00003.png"] == before["class-00003.png"]
    for i, name in zip((4, 5, 6), new):
        assert (folder / f"{name}.txt").read_text(encoding="utf-8") == PROMPT
        with Image.open(folder / f"{name}.png") as image:
            image.load()
            assert (image.format, image.size, image.mode) == ("PNG", (64, 64), "RGB")
            assert f"Seed: {42 + i}" in image.info["parameters"]
            assert image.info["parameters"].startswith(f"{PROMPT}\nNegative prompt: blurry\n")
            assert np.asarray(image).std() > 0
    events = RunFolder(tmp_path / "run").read_events()
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    assert sorted(os.path.basename(e["path"]) for e in events if e["event"] == "image") == [n + ".png" for n in new]


def test_a_stopped_run_continues_to_the_uninterrupted_result(model, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run_job(make_cfg(model, whole), tmp_path / "run-whole")["generated"] == 5
    first = run_job(make_cfg(model, resumed), tmp_path / "run-stopped", StopAfterFirstBatch)
    assert first == {"existing": 0, "generated": 2, "total": 2, "complete": False}
    second = run_job(make_cfg(model, resumed), tmp_path / "run-continued")
    assert second == {"existing": 2, "generated": 3, "total": 5, "complete": True}
    expected = class_files(whole)
    assert len(expected) == 10 and class_files(resumed) == expected
    images = [np.asarray(Image.open(whole / f"class-{i:05d}.png")) for i in range(5)]
    assert len({image.tobytes() for image in images}) == 5  # each image has its own seed


def test_nothing_to_do_does_not_load_the_model(model, tmp_path, monkeypatch):
    import core.models.sd

    def fail(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(core.models.sd, "load_sd_model", fail)
    folder = tmp_path / "class"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (i, 0, 0)).save(folder / f"photo{i}.png")
    before = class_files(folder)
    result = run_job(make_cfg(model, folder, num_class_images=3), tmp_path / "run")
    assert result == {"existing": 3, "generated": 0, "total": 3, "complete": True}
    assert class_files(folder) == before and len(list(folder.iterdir())) == 3
    assert "nothing to generate" in (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")


def test_images_in_subfolders_count(model, tmp_path, monkeypatch):
    """A kohya regularization folder keeps its images in `N_name` subfolders."""
    import core.models.sd

    monkeypatch.setattr(core.models.sd, "load_sd_model", lambda *args, **kwargs: pytest.fail("model loaded"))
    folder = tmp_path / "reg"
    (folder / "1_dog").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64)).save(folder / "1_dog" / f"dog{i}.png")
    Image.new("RGB", (64, 64)).save(folder / "class-00004.png")
    result = run_job(make_cfg(model, folder, num_class_images=3), tmp_path / "run")
    assert result == {"existing": 3, "generated": 0, "total": 3, "complete": True}


def test_bad_resolution_is_a_config_error(model, tmp_path):
    with pytest.raises(ValueError, match="multiples of 8"):
        make_cfg(model, tmp_path, resolution="60,64")


def test_cli_run(model, tmp_path):
    run_dir, folder = tmp_path / "run", tmp_path / "new" / "class"
    argv = [sys.executable, "-m", "core", "class_images", "--run-dir", str(run_dir),
            "--pretrained_model_name_or_path", str(model), "--class_data_dir", str(folder),
            "--class_prompt", PROMPT, "--num_class_images", "2", "--resolution", "64,64",
            "--sample_steps", "1", "--set", "batch_size=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=Path(__file__).resolve().parent.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    assert result == {"existing": 0, "generated": 2, "total": 2, "complete": True}
    assert sorted(p.name for p in folder.iterdir()) == [
        "class-00000.png", "class-00000.txt", "class-00001.png", "class-00001.txt"]
