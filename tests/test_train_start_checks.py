"""Every refusal and warning the trainer gives before its first step is what Check settings reports,
word for word (both come from core/train/start_checks.py)."""
import pytest
from PIL import Image
from trainkit import events, train, train_values

from core.train.preflight import check_training
from core.train.start_checks import StartRefused


def _prompt_file(tmp_path, text="# nothing but a comment\n"):
    path = tmp_path / "prompts.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _folder(tmp_path, name="folder"):
    (tmp_path / name).mkdir(exist_ok=True)
    return str(tmp_path / name)


def _existing_lora(tmp_path, kit):
    """A LoRA run saving as a diffusers folder still writes <output_name>.safetensors: one is there."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"an earlier run's LoRA")
    return {"train_lora": True, "save_model_as": "diffusers"}


def _interrupted_run(tmp_path):
    """What a stopped run of the same output_name left: a step save and its resumable state."""
    state = tmp_path / "out" / "model-step00000002-state"
    state.mkdir(parents=True)
    (state / "training_state.json").write_text('{"global_step": 2, "epoch": 0, "batch_in_epoch": 2}')
    (tmp_path / "out" / "model-step00000002.safetensors").write_bytes(b"an earlier run's step save")
    return {}


def _one_image(tmp_path, kit):
    folder = tmp_path / "one"
    folder.mkdir()
    image = sorted((kit / "dataset").rglob("*.png"))[0]
    (folder / image.name).write_bytes(image.read_bytes())
    return {"train_data_dir": [str(folder)], "validation_split": 0.5}


def _more_class_images_than_samples(tmp_path, kit):
    """30 class images for the kit's 24 training samples an epoch (images x repeats)."""
    folder = tmp_path / "class"
    folder.mkdir()
    for i in range(30):
        Image.new("RGB", (64, 64), (8 * i, 90, 200)).save(folder / f"photo-{i}.png")
    return {"class_data_dir": str(folder), "class_prompt": "a photo of a dog", "num_class_images": 30,
            "cache_latents": False}


# (case, settings (from tmp_path and the kit), field, severity)
CASES = [
    ("LoRA saved as diffusers over an existing LoRA file", _existing_lora, "output_name", "error"),
    ("finished model there", lambda t, k: (t.joinpath("out").mkdir(), t.joinpath("out", "model.safetensors")
                                           .write_bytes(b"x"), {})[-1], "output_name", "error"),
    ("step saves of an interrupted run there", lambda t, k: _interrupted_run(t), "output_name", "error"),
    ("output_dir is a file", lambda t, k: (t.joinpath("file").write_text("x"), {"output_dir": str(t / "file")})[-1],
     "output_dir", "error"),
    ("model missing", lambda t, k: {"pretrained_model_name_or_path": str(t / "nowhere")},
     "pretrained_model_name_or_path", "error"),
    ("model folder is not a pipeline", lambda t, k: {"pretrained_model_name_or_path": str(k / "model" / "unet")},
     "pretrained_model_name_or_path", "error"),
    ("vae missing", lambda t, k: {"vae": str(t / "no-vae.safetensors")}, "vae", "error"),
    ("resume without a state", lambda t, k: {"resume": _folder(t)}, "resume", "error"),
    ("prompt file without prompts", lambda t, k: {"sample_prompts": _prompt_file(t)}, "sample_prompts", "error"),
    ("CLIP folder without a model", lambda t, k: {"sample_prompts": _prompt_file(t, "a red circle\n"),
                                                  "sample_clip_model": _folder(t)}, "sample_clip_model", "error"),
    ("no images", lambda t, k: {"train_data_dir": [_folder(t, "empty")]}, "train_data_dir", "error"),
    ("empty validation folder", lambda t, k: {"validation_data_dir": _folder(t, "empty")}, "validation_data_dir",
     "error"),
    ("validation split of one image", lambda t, k: _one_image(t, k), "validation_split", "error"),
    ("more class images than an epoch takes", _more_class_images_than_samples, "num_class_images", "warning"),
    ("two text-encoder rates on SD 1.x", lambda t, k: {"train_text_encoder": True, "learning_rate_te1": 1e-5},
     "learning_rate_te1", "warning"),
    ("text encoder trained at rate 0", lambda t, k: {"train_text_encoder": True, "learning_rate_te": 0,
                                                     "learning_rate_te1": 1e-5}, "learning_rate_te", "error"),
    ("zero terminal SNR on an eps model", lambda t, k: {"zero_terminal_snr": True}, "zero_terminal_snr", "warning"),
    ("Adafactor in relative-step mode with a schedule",
     lambda t, k: {"optimizer_type": "Adafactor", "lr_scheduler": "cosine"}, "optimizer_type", "warning"),
]


@pytest.mark.parametrize("settings, field, severity", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_check_settings_reports_what_the_trainer_refuses_or_warns(settings, field, severity, demo_kit, tmp_path):
    kit = demo_kit("sd1", 6, 0)
    values = {**train_values(kit, tmp_path / "out", max_train_steps=1), **settings(tmp_path, kit)}
    reported = [str(p) for p in check_training(values).problems if p.field == field and p.severity == severity]
    assert len(reported) == 1, check_training(values).report()

    if severity == "error":
        with pytest.raises(StartRefused) as refused:
            train(values, tmp_path / "run")
        assert reported[0] in str(refused.value).splitlines()
    else:
        train(values, tmp_path / "run")
        warnings = [e["message"] for e in events(tmp_path / "run") if e["event"] == "warning"]
        assert reported[0] in warnings


def test_sdxl_ignores_clip_skip_in_both(demo_kit, tmp_path):
    kit = demo_kit("sdxl", 4, 0)
    values = train_values(kit, tmp_path / "out", max_train_steps=1, clip_skip=2)
    [reported] = [str(p) for p in check_training(values).warnings if p.field == "clip_skip"]
    train(values, tmp_path / "run")
    assert reported in [e["message"] for e in events(tmp_path / "run") if e["event"] == "warning"]


def test_processes_the_gui_starts_itself_are_only_the_trainers_warning(demo_kit, tmp_path):
    """The one start warning Check settings cannot give: a run started without `accelerate launch` has
    one process where num_processes asks for more (the GUI always starts them through it)."""
    kit = demo_kit("sd1", 6, 0)
    values = train_values(kit, tmp_path / "out", max_train_steps=1, num_processes=2)
    assert not [p for p in check_training(values).problems if p.field == "num_processes" and "this run has" in
                p.message]
    train(values, tmp_path / "run")
    assert any(e["event"] == "warning" and e["message"].startswith("num_processes: num_processes is 2 but this run "
                                                                   "has 1 process") for e in events(tmp_path / "run"))


def test_a_run_that_resumes_its_own_state_may_replace_its_saves(tmp_path):
    """The saves of an interrupted run are refused to a new run but belong to the run that resumes it."""
    from core.config import TrainConfig
    from core.train.start_checks import output_problems

    _interrupted_run(tmp_path)
    base = {"pretrained_model_name_or_path": str(tmp_path), "train_data_dir": [str(tmp_path)],
            "output_dir": str(tmp_path / "out"), "output_name": "model"}
    assert [p.field for p in output_problems(TrainConfig(**base))] == ["output_name"]
    assert not output_problems(TrainConfig(**base, resume=str(tmp_path / "out" / "model-step00000002-state")))
    assert not output_problems(TrainConfig(**{**base, "output_name": "another"}))
