"""Samples, validation loss and auto_stop inside real (tiny, CPU) training runs."""
import pytest
from PIL import Image

from trainkit import assert_same_weights, events, train, train_values


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


def metrics(run_dir, name: str) -> list[tuple[int, float]]:
    return [(e["step"], e["value"]) for e in events(run_dir) if e["event"] == "metric" and e["name"] == name]


def test_samples_are_written_announced_and_do_not_change_training(kit, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na red circle --w 64 --h 64 --s 2 --d 5\na blue square --n blurry --w 64 --h 96 "
                       "--s 2\n", encoding="utf-8")
    train(train_values(kit, tmp_path / "plain", max_train_steps=4), tmp_path / "r0")
    train(train_values(kit, tmp_path / "sampled", max_train_steps=4, sample_prompts=str(prompts),
                       sample_every_n_steps=2, sample_at_first=True), tmp_path / "run")
    samples = tmp_path / "run" / "samples"
    names = sorted(p.name for p in samples.iterdir())
    assert names == [f"step{s:08d}-{i:02d}.png" for s in (0, 2, 4) for i in (0, 1)]
    assert Image.open(samples / "step00000004-01.png").size == (64, 96)
    announced = [e["path"] for e in events(tmp_path / "run") if e["event"] == "image"]
    assert sorted(announced) == sorted(str(samples / n) for n in names)
    assert_same_weights(tmp_path / "plain" / "model.safetensors", tmp_path / "sampled" / "model.safetensors")


def test_bad_prompt_file_fails_before_training(kit, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat --q 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="prompts.txt:1"):
        train(train_values(kit, tmp_path / "out", sample_prompts=str(prompts)), tmp_path / "run")


def test_validation_loss_is_logged_and_does_not_change_training(kit, tmp_path):
    split = {"validation_split": 0.34, "validation_seed": 3}
    train(train_values(kit, tmp_path / "plain", max_train_steps=4, **split), tmp_path / "r0")
    train(train_values(kit, tmp_path / "validated", max_train_steps=4, validate_every_n_steps=2, **split),
          tmp_path / "run")
    val = metrics(tmp_path / "run", "val_loss")
    assert [s for s, _ in val] == [2, 4] and all(v > 0 for _, v in val)
    assert metrics(tmp_path / "r0", "val_loss")[0][0] == 4  # at the end even when not asked for during the run
    assert "validation: 2 images held out" in (tmp_path / "run" / "log.txt").read_text()
    assert_same_weights(tmp_path / "plain" / "model.safetensors", tmp_path / "validated" / "model.safetensors")


def test_validation_folder(kit, tmp_path):
    train(train_values(kit, tmp_path / "out", max_train_steps=2, validation_data_dir=str(kit / "dataset"),
                       validate_every_n_steps=1), tmp_path / "run")
    assert [s for s, _ in metrics(tmp_path / "run", "val_loss")] == [1, 2]


def test_auto_stop_reduces_the_rate_then_stops_on_a_plateau_keeping_the_best(kit, tmp_path):
    # min_delta far above any change of the loss: every validation after the first is a plateau
    train(train_values(kit, tmp_path / "out", max_train_steps=20, lr_scheduler="constant", validation_split=0.34,
                       validate_every_n_steps=1, auto_stop=True, auto_stop_patience=1, auto_stop_min_delta=10.0,
                       auto_stop_lr_reductions=1, auto_stop_lr_factor=0.5), tmp_path / "run")
    assert [s for s, _ in metrics(tmp_path / "run", "val_loss")] == [1, 2, 3]
    lrs = dict(metrics(tmp_path / "run", "lr"))
    assert lrs[1] == pytest.approx(1e-3) and lrs[3] == pytest.approx(0.5e-3)
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == ["model-best.safetensors", "model.safetensors"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "auto_stop: validation loss has not improved" in log


def test_auto_stop_state_resumes_with_the_run(kit, tmp_path):
    values = {"max_train_steps": 20, "lr_scheduler": "constant", "validation_split": 0.34, "validate_every_n_steps": 1,
              "auto_stop": True, "auto_stop_patience": 1, "auto_stop_min_delta": 10.0, "auto_stop_lr_reductions": 1,
              "auto_stop_lr_factor": 0.5, "save_every_n_steps": 2, "save_state": True}
    train(train_values(kit, tmp_path / "out", **values), tmp_path / "run")
    state = tmp_path / "out" / "model-step00000002-state"
    train(train_values(kit, tmp_path / "again", resume=str(state), **values), tmp_path / "run2")
    # the plateau (best loss, one reduction made) and the reduced rate came back: it stops at step 3 again
    assert [s for s, _ in metrics(tmp_path / "run2", "val_loss")] == [3]
    assert dict(metrics(tmp_path / "run2", "lr"))[3] == pytest.approx(0.5e-3)
    assert "auto_stop" in (tmp_path / "run2" / "log.txt").read_text()
