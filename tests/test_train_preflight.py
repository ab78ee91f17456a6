"""The Training tab's settings check (core/train/preflight.py) on the tiny demo kit."""
import json
import os
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.config import TrainConfig, validate
from core.train import preflight, start_checks
from core.train.data import prepare_latent_cache
from core.train.preflight import Preflight, check_training
from core.train.start_checks import Problem


@pytest.fixture
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


@pytest.fixture
def dataset(kit, copy_dataset):
    return copy_dataset(kit)


@pytest.fixture
def values(kit, dataset, tmp_path):
    return {"pretrained_model_name_or_path": str(kit / "model"), "train_data_dir": [str(dataset)],
            "output_dir": str(tmp_path / "out"), "max_resolution": "128,128", "min_bucket_reso": 64,
            "max_bucket_reso": 256}


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def errors_of(result: Preflight, field: str) -> list[str]:
    return [p.message for p in result.errors if p.field == field]


def warnings_of(result: Preflight, field: str | None) -> list[str]:
    return [p.message for p in result.warnings if p.field == field]


def test_good_settings_count_images_and_the_latent_cache(values, dataset, ctx):
    result = check_training(values)
    assert result.problems == [] and result.ok
    assert result.images == 6 and result.cache_missing == 6 and result.needs_cache

    prepare_latent_cache(validate(TrainConfig, values, "t"), ctx)
    result = check_training(values)
    assert result.ok and result.cache_missing == 0 and not result.needs_cache

    image = sorted(dataset.rglob("*.png"))[0]
    stat = image.stat()
    Image.open(image).save(image)  # edited: new mtime
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert check_training(values).cache_missing == 1


def test_cache_count_follows_the_cache_recipe(values, ctx, tmp_path):
    prepare_latent_cache(validate(TrainConfig, values, "t"), ctx)
    assert check_training(values).cache_missing == 0
    assert check_training({**values, "flip_aug": True}).cache_missing == 6  # no flipped latents yet
    assert check_training({**values, "max_resolution": "64,64"}).cache_missing == 6  # other buckets
    assert check_training({**values, "latents_dir": str(tmp_path / "latents")}).cache_missing == 6
    off = check_training({**values, "cache_latents": False})
    assert off.ok and off.cache_missing == 0 and not off.needs_cache


def test_single_file_model_is_accepted(values, kit):
    result = check_training({**values, "pretrained_model_name_or_path": str(kit / "model.safetensors")})
    assert result.problems == []


def test_model_problems_name_the_model_field(values, kit, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model", encoding="utf-8")
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(other))
    no_vae = shutil.copytree(kit / "model", tmp_path / "no_vae", ignore=shutil.ignore_patterns("vae"))
    cases = {tmp_path / "missing": "model path not found", notes: "not a model file",
             other: "not a Stable Diffusion checkpoint", kit / "model" / "unet": "no model_index.json",
             no_vae: "vae/ missing"}
    for path, expected in cases.items():
        result = check_training({**values, "pretrained_model_name_or_path": str(path)})
        [message] = errors_of(result, "pretrained_model_name_or_path")
        assert expected in message and str(path.name) in message
    result = check_training({**values, "vae": str(tmp_path / "missing_vae")})
    assert "not found" in errors_of(result, "vae")[0] and len(result.errors) == 1


def test_settings_that_do_not_fit_the_architecture_are_warnings(values, demo_kit):
    sdxl = demo_kit("sdxl", 4, 0)
    for model in (sdxl / "model", sdxl / "model.safetensors"):
        result = check_training({**values, "pretrained_model_name_or_path": str(model), "clip_skip": 2})
        assert result.ok and [p.field for p in result.warnings] == ["clip_skip"]
    result = check_training({**values, "learning_rate_te2": 0})
    assert result.ok and [p.field for p in result.warnings] == ["learning_rate_te2"]


def test_dataset_folders_must_exist_and_hold_images(values, dataset, tmp_path):
    missing = tmp_path / "missing"
    result = check_training({**values, "train_data_dir": [str(dataset), str(missing)]})
    [message] = errors_of(result, "train_data_dir")
    assert str(missing) in message and "not found" in message and result.images == 0

    empty = tmp_path / "empty"
    empty.mkdir()
    result = check_training({**values, "train_data_dir": [str(empty)]})
    assert "no usable images" in errors_of(result, "train_data_dir")[0] and not result.ok

    result = check_training({**values, "recursive": False})  # the demo's images are in N_name subfolders
    assert "turn on recursive" in errors_of(result, "train_data_dir")[0]


def test_missing_captions_and_broken_images_are_warnings(values, dataset):
    for caption in sorted(dataset.rglob("*.txt"))[:2]:
        caption.unlink()
    (dataset / "5_demo" / "broken.png").write_bytes(b"not an image")
    result = check_training(values)
    assert result.ok and result.images == 6
    [captions] = warnings_of(result, "caption_extension")
    assert captions.startswith("2 of 6 images have no .txt caption file")
    [skipped] = warnings_of(result, "train_data_dir")
    assert skipped.startswith("1 skipped") and "broken.png" in skipped


@pytest.mark.parametrize("name, save_as", [("model.safetensors", "safetensors"),
                                           ("model-best.safetensors", "safetensors"), ("model-ema", "diffusers")])
def test_an_earlier_final_model_is_not_overwritten(values, tmp_path, name, save_as):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).mkdir() if save_as == "diffusers" else (out / name).write_bytes(b"")
    result = check_training({**values, "save_model_as": save_as})
    [message] = errors_of(result, "output_name")
    assert str(out / name) in message and "choose another output_name" in message

    state = tmp_path / "model-step00000010-state"
    state.mkdir()
    (state / "training_state.json").write_text(json.dumps({"global_step": 10}), encoding="utf-8")
    assert check_training({**values, "save_model_as": save_as, "resume": str(state)}).ok


def test_output_dir_must_be_a_writable_folder(values, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"")
    for output_dir in (a_file, a_file / "out"):
        result = check_training({**values, "output_dir": str(output_dir)})
        assert len(errors_of(result, "output_dir")) == 1


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions (not root)")
def test_unwritable_output_dir(values, tmp_path):
    locked = tmp_path / "locked"
    (locked / "existing").mkdir(parents=True)
    locked.chmod(0o500)
    (locked / "existing").chmod(0o500)
    try:
        for output_dir in (locked / "existing", locked / "new" / "out"):
            result = check_training({**values, "output_dir": str(output_dir)})
            [message] = errors_of(result, "output_dir")
            assert "choose a folder you can write to" in message
    finally:
        (locked / "existing").chmod(0o700)
        locked.chmod(0o700)


def test_refused_writes_are_reported(values, tmp_path, monkeypatch):
    """The same messages where permissions cannot be taken away (as root): the OS refuses."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(start_checks.tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(start_checks.os, "access", lambda path, mode: False)
    (tmp_path / "existing").mkdir()
    for output_dir in (tmp_path / "existing", tmp_path / "new" / "out"):
        [message] = errors_of(check_training({**values, "output_dir": str(output_dir)}), "output_dir")
        assert "choose a folder you can write to" in message


def test_resume_needs_a_saved_training_state(values, tmp_path):
    folder = tmp_path / "not-a-state"
    folder.mkdir()
    [message] = errors_of(check_training({**values, "resume": str(folder)}), "resume")
    assert "training_state.json" in message and str(folder) in message
    (folder / "training_state.json").write_text("{broken", encoding="utf-8")
    [message] = errors_of(check_training({**values, "resume": str(folder)}), "resume")
    assert "cannot be read" in message


def test_sample_prompt_file_and_clip_model(values, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle --w wide\n", encoding="utf-8")
    result = check_training({**values, "sample_prompts": str(prompts), "sample_clip_model": str(tmp_path)})
    [message] = errors_of(result, "sample_prompts")
    assert message.startswith(f"{prompts}:2: --w (width) needs a whole number")
    assert "no config.json" in errors_of(result, "sample_clip_model")[0]
    prompts.write_text("a red square --w 128 --h 128\n", encoding="utf-8")
    assert check_training({**values, "sample_prompts": str(prompts)}).ok


def test_validation_images(values, dataset, tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(sorted(dataset.rglob("*.png"))[0], single)
    result = check_training({**values, "train_data_dir": [str(single)], "validation_split": 0.2})
    assert "at least 2 images" in errors_of(result, "validation_split")[0]
    assert check_training({**values, "validation_split": 0.2}).ok

    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, expected in ((tmp_path / "missing", "not found"), (empty, "no usable images")):
        result = check_training({**values, "validation_data_dir": str(folder)})
        assert expected in errors_of(result, "validation_data_dir")[0]
    assert check_training({**values, "validation_data_dir": str(dataset)}).ok


def test_schema_errors_are_mapped_to_fields_and_stop_the_check(values, tmp_path):
    result = check_training({**values, "pretrained_model_name_or_path": str(tmp_path / "missing"),
                             "learning_rate": -1, "bogus": 1, "train_data_dir": []})
    assert not result.ok and result.images == 0
    assert {p.field for p in result.problems} == {"learning_rate", "bogus", "train_data_dir"}
    assert errors_of(result, "learning_rate") == ["Input should be greater than 0 (got -1)"]
    assert errors_of(result, "bogus") == ["unknown key 'bogus' (not a parameter of this job)"]

    result = check_training({**values, "lr_warmup_steps": 10})  # a check across fields
    [problem] = result.problems
    assert problem.field == "lr_warmup_steps" and "lr_scheduler" in problem.message


def test_gpu_settings_without_cuda_are_warnings(values, no_cuda, monkeypatch):
    result = check_training({**values, "mixed_precision": "fp16", "full_fp16": True})
    [message] = warnings_of(result, "mixed_precision")
    assert "fp16 with full_fp16" in message and "set mixed_precision to no" in message and result.ok
    assert warnings_of(result, None) == []  # the demo model is tiny
    monkeypatch.setattr(preflight, "BIG_MODEL_BYTES", 1000)
    assert "very slow" in warnings_of(check_training(values), None)[0]


def test_adafactor_relative_step_ignores_lr_schedules(values):
    adafactor = {**values, "optimizer_type": "Adafactor", "lr_scheduler": "cosine", "lr_drops": [50]}
    [message] = warnings_of(check_training(adafactor), "optimizer_type")
    assert "lr_scheduler cosine and lr_drops are ignored" in message
    fixed_lr = {**adafactor, "optimizer_args": ["relative_step=False", "scale_parameter=False"]}
    assert check_training(fixed_lr).problems == []
    assert check_training({**values, "optimizer_type": "Adafactor"}).problems == []


def snapshot(*roots) -> dict:
    """Every file and folder under the roots, with the size and mtime of files."""
    found = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            found.update({os.path.join(folder, d): None for d in dirs})
            for name in files:
                stat = os.stat(os.path.join(folder, name))
                found[os.path.join(folder, name)] = (stat.st_size, stat.st_mtime_ns)
    return found


def test_a_check_changes_nothing_on_disk(values, kit, tmp_path, studio_home):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\n", encoding="utf-8")
    runs = [values, {**values, "output_dir": str(tmp_path / "new" / "deeper"), "sample_prompts": str(prompts),
                     "latents_dir": str(tmp_path / "latents"), "validation_split": 0.3}]
    (tmp_path / "out").mkdir()
    before = snapshot(tmp_path, studio_home, kit)
    for run in runs:
        assert check_training(run).ok
    assert snapshot(tmp_path, studio_home, kit) == before


def test_report_lists_errors_then_warnings_then_counts(values):
    result = Preflight([Problem(None, "no CUDA GPU found", "warning"), Problem("output_dir", "cannot write")],
                       images=12, cache_missing=3, cache_latents=True)
    assert result.report() == (
        "**1 problem to fix before training:**\n- `output_dir`: cannot write\n\n"
        "**Warnings:**\n- no CUDA GPU found\n\n"
        "12 images; latent cache: 3 missing or stale — build it now or the run builds it first")
    report = check_training(values).report()
    assert report.startswith("**Settings look good.**") and "6 images; latent cache: 6 missing" in report
    assert check_training({**values, "cache_latents": False}).report().endswith("6 images; latent cache: off")


def test_more_processes_than_gpus_are_a_warning(values, monkeypatch, no_cuda):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert warnings_of(check_training({**values, "num_processes": 2}), "num_processes")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert not preflight.check_device(validate(TrainConfig, {**values, "num_processes": 4}, "t"))
    assert preflight.check_device(validate(TrainConfig, {**values, "num_processes": 4, "gpu_ids": "0,1"}, "t"))


def test_the_check_on_the_command_line(values, kit, tmp_path, studio_home, capsys):
    from core.jobs.cli import main

    config = tmp_path / "settings.json"  # a preset of the values
    config.write_text(json.dumps({"schema_version": 2, "job": "train", "values": values}), encoding="utf-8")
    before = snapshot(tmp_path, kit)
    assert main(["check", "--config", str(config), "--card", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("**Settings look good.**") and "6 images; latent cache: 6 missing" in out
    assert "The run will start with:\n  " in out and "-m core train --config" in out
    assert "**Memory estimate:" in out and "— fits** (a card of 8 GB" in out

    assert main(["check", "--config", str(config), "--set", f"train_data_dir={json.dumps([str(tmp_path / 'no')])}",
                 "--card", "0.01", "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert not data["ok"] and data["command"] is None
    assert {"field": "train_data_dir", "severity": "error"}.items() <= data["problems"][0].items()
    assert data["estimate"]["verdict"] == "does not fit" and data["estimate"]["savers"]
    assert main(["check", "--config", str(config), "--set", "train_batch_size=0"]) == 2
    out = capsys.readouterr().out
    assert "- `train_batch_size`:" in out and "No estimate:" in out
    # nothing written, nothing started (the estimate may measure a new step shape into the studio's cache)
    assert snapshot(tmp_path, kit) == before and not (studio_home / "runs").exists()
