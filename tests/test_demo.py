"""The demo job: a tiny model (diffusers folder + single file) and a captioned dataset, offline."""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from core.config import DemoConfig
from core.dataset.demo import build_demo, build_pipeline, run
from core.jobs.protocol import JobContext, JobStopped
from core.jobs.run_folder import RunFolder


def test_run_builds_model_single_file_and_dataset(tmp_path):
    from PIL import Image

    out, run_dir = tmp_path / "demo", tmp_path / "run"
    with JobContext(run_dir, echo=False) as ctx:
        summary = run(DemoConfig(out=str(out), arch="sd1", num_images=12, seed=1), ctx)

    assert (out / "model" / "model_index.json").is_file()
    assert (out / "model" / "tokenizer" / "tokenizer.json").is_file()
    assert (out / "model.safetensors").stat().st_size > 1_000_000
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "demo.json", "model", "model.safetensors"]
    assert json.loads((out / "demo.json").read_text(encoding="utf-8")) == summary
    assert summary["arch"] == "sd1" and summary["num_images"] == 12
    assert summary["images_per_folder"] == {"5_demo": 8, "2_shapes": 4}
    assert set(summary["parameters"]) == {"unet", "vae", "text_encoder"}

    images = [p for p in (out / "dataset").rglob("*") if p.suffix in (".png", ".jpg", ".webp")]
    assert len(images) == 12
    assert {p.suffix for p in images} == {".png", ".jpg", ".webp"}
    sizes = set()
    for path in images:
        with Image.open(path) as image:
            sizes.add(image.size)
        caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert "background" in caption
        assert caption.startswith("demo, ") == (path.parent.name == "5_demo")
    assert len({round(w / h, 2) for w, h in sizes}) >= 4

    progress = [e for e in RunFolder(run_dir).read_events() if e["event"] == "progress"]
    assert progress[-1]["step"] == progress[-1]["total"] == 15
    assert [e["step"] for e in progress] == sorted(e["step"] for e in progress)


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = build_pipeline("sd1", seed=7).unet.state_dict()
    assert torch.equal(torch.rand(1), before)
    second = build_pipeline("sd1", seed=7).unet.state_dict()
    other = build_pipeline("sd1", seed=8).unet.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["conv_in.weight"], other["conv_in.weight"])


@pytest.mark.parametrize("arch", ["sd1", "sd2v", "sdxl"])
def test_saved_pipeline_loads_and_generates_offline(arch, tmp_path):
    from diffusers import DiffusionPipeline

    build_demo(tmp_path, arch, num_images=4, seed=0)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "model", local_files_only=True)
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if arch == "sd2v" else "epsilon")
    assert pipe.tokenizer.pad_token == ("!" if arch == "sd2v" else "<|endoftext|>")
    if arch == "sdxl":
        assert pipe.tokenizer_2.pad_token == "!"
        assert pipe.vae.config.scaling_factor == 0.13025
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3)


def test_refuses_non_empty_folder_without_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ValueError, match=str(tmp_path)):
        build_demo(tmp_path, "sd1", num_images=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_unknown_arch_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="sd3"):
        build_demo(tmp_path / "demo", "sd3", num_images=4)
    assert not (tmp_path / "demo").exists()


def test_overwrite_replaces_only_demo_entries(tmp_path):
    build_demo(tmp_path, "sd1", num_images=4, seed=0)
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "dataset" / "5_demo" / "extra.txt").write_text("old", encoding="utf-8")
    summary = build_demo(tmp_path, "sd2v", num_images=5, seed=1, overwrite=True)
    assert summary["arch"] == "sd2v"
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert not (tmp_path / "dataset" / "5_demo" / "extra.txt").exists()
    assert len(list((tmp_path / "dataset").rglob("*.txt"))) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo-")]


def test_overwrite_never_touches_a_dataset_it_did_not_make(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "photo.txt").write_text("a user's caption", encoding="utf-8")
    with pytest.raises(ValueError, match="not made by the demo job"):
        build_demo(tmp_path, "sd1", num_images=4, overwrite=True)
    assert (tmp_path / "dataset" / "photo.txt").read_text(encoding="utf-8") == "a user's caption"


def test_stop_leaves_previous_demo_intact(tmp_path):
    out, run_dir = tmp_path / "demo", tmp_path / "run"
    build_demo(out, "sd1", num_images=4, seed=0)
    before = (out / "model.safetensors").read_bytes()
    with JobContext(run_dir, echo=False) as ctx, pytest.raises(JobStopped):
        (run_dir / "STOP").touch()
        run(DemoConfig(out=str(out), arch="sdxl", num_images=4, overwrite=True), ctx)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "demo.json", "model", "model.safetensors"]
