"""The trainer on the tiny demo model, CPU: learning, saving, stop/kill and exact resume, 2 processes."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainkit import StopDuringTraining, assert_same_weights, events, prompt_encoder, train, train_values

from core.config import TrainConfig, validate
from core.train import step

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


@pytest.fixture(scope="module")
def uninterrupted(kit, tmp_path_factory):
    """A reference run of 6 steps, saving a resumable state at step 3."""
    out = tmp_path_factory.mktemp("reference")
    result = train(train_values(kit, out, save_every_n_steps=3, save_state=True), out / "run")
    return out, result


def test_run_saves_model_and_reports(uninterrupted):
    out, result = uninterrupted
    assert result["steps"] == 6 and Path(result["model"]) == out / "model.safetensors"
    assert (out / "model-step00000003.safetensors").is_file()
    assert (out / "model-step00000003-state" / "training_state.json").is_file()
    evs = events(out / "run")
    progress = [e for e in evs if e["event"] == "progress"]
    assert progress[-1]["step"] == progress[-1]["total"] == 6
    losses = [e["value"] for e in evs if e["event"] == "metric" and e["name"] == "loss"]
    assert len(losses) == 6 and all(v == v and v > 0 for v in losses)
    assert any(e["event"] == "checkpoint" for e in evs)
    assert list((out / "run" / "tensorboard").rglob("events.out.tfevents*"))


def test_resume_from_saved_state_equals_uninterrupted(kit, uninterrupted, tmp_path):
    out, _ = uninterrupted
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    result = train(train_values(kit, resumed, resume=str(out / "model-step00000003-state")), tmp_path / "run")
    assert result["steps"] == 6
    assert_same_weights(out / "model.safetensors", resumed / "model.safetensors")


def test_stop_saves_state_and_resume_equals_uninterrupted(kit, uninterrupted, tmp_path):
    out, _ = uninterrupted
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "STOP").touch()  # the loop stops after its first step
    result = train(train_values(kit, tmp_path / "out"), run_dir, StopDuringTraining)
    assert result["stopped_at"] == 1 and not (tmp_path / "out" / "model.safetensors").exists()
    result = train(train_values(kit, tmp_path / "out", resume=result["state"]), tmp_path / "run2")
    assert result["steps"] == 6
    assert_same_weights(out / "model.safetensors", tmp_path / "out" / "model.safetensors")


def test_loss_falls_when_overfitting_a_fixed_batch(kit):
    from core.models.sd import load_sd_model

    model = load_sd_model(str(kit / "model"))
    cfg = validate(TrainConfig, train_values(kit, kit / "unused"), "test")
    batch = {"latents": torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)),
             "captions": ["a red circle", "a blue square"]}
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(0)  # the same noise and timesteps every step: a fixed batch
        loss = step.loss_of_batch(batch, model, model.unet, prompt_encoder(model, cfg), cfg, torch.float32,
                                  torch.device("cpu"))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def sd1_model(kit):
    from core.models.sd import load_sd_model

    return load_sd_model(str(kit / "model"))


def option_loss(model, kit, **options) -> float:
    cfg = validate(TrainConfig, train_values(kit, kit / "unused", **options), "test")
    batch = {"latents": torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)),
             "captions": ["a red circle", "a blue square"]}
    torch.manual_seed(0)
    with torch.no_grad():
        return step.loss_of_batch(batch, model, model.unet, prompt_encoder(model, cfg), cfg, torch.float32,
                                  torch.device("cpu")).item()


@pytest.mark.parametrize("options", [
    {"noise_offset": 0.1}, {"noise_offset": 0.1, "noise_offset_random_strength": True},
    {"multires_noise_iterations": 6}, {"ip_noise_gamma": 0.1},
    {"loss_type": "huber"}, {"loss_type": "smooth_l1", "huber_schedule": "constant"},
    {"min_snr_gamma": 0.05}, {"debiased_estimation_loss": True},  # gamma below the drawn SNRs: weights < 1
])
def test_each_noise_and_loss_option_changes_the_loss(sd1_model, kit, options):
    baseline = option_loss(sd1_model, kit)
    changed = option_loss(sd1_model, kit, **options)
    assert changed == changed and changed != baseline  # finite and not ignored


def test_timestep_range_reaches_the_sampler(sd1_model, kit, monkeypatch):
    seen = []
    original = step.sample_timesteps

    def spy(batch, low, high, device, generator=None):
        seen.append((low, high))
        return original(batch, low, high, device, generator)

    monkeypatch.setattr(step, "sample_timesteps", spy)
    option_loss(sd1_model, kit, min_timestep=500, max_timestep=900)
    assert seen == [(500, 900)]


def test_noise_and_loss_options_train_end_to_end(demo_kit, tmp_path):
    result = train(train_values(demo_kit("sd2v", 4, 1), tmp_path / "out", max_train_steps=2, zero_terminal_snr=True,
                                min_snr_gamma=5.0, loss_type="huber", ip_noise_gamma=0.1, noise_offset=0.05),
                   tmp_path / "run")
    assert result["steps"] == 2
    losses = [e["value"] for e in events(tmp_path / "run") if e["event"] == "metric" and e["name"] == "loss"]
    assert len(losses) == 2 and all(v == v for v in losses)


def test_v_prediction_target_is_the_velocity():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction")
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    alpha = scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(step.training_target(scheduler, latents, noise, t), alpha * noise - sigma * latents,
                          atol=1e-6)
    scheduler = DDPMScheduler(prediction_type="epsilon")
    assert step.training_target(scheduler, latents, noise, t) is noise


def test_8bit_adamw_cosine_warmup_and_accumulation_run(kit, tmp_path):
    result = train(train_values(kit, tmp_path / "out", max_train_steps=3, optimizer_type="AdamW8bit",
                                lr_scheduler="cosine", lr_warmup_steps=2, gradient_accumulation_steps=2,
                                gradient_checkpointing=True, save_model_as="diffusers"), tmp_path / "run")
    assert result["steps"] == 3 and (tmp_path / "out" / "model" / "model_index.json").is_file()
    lrs = [e["value"] for e in events(tmp_path / "run") if e["event"] == "metric" and e["name"] == "lr"]
    assert lrs[0] == pytest.approx(0.5e-3) and lrs[1] == pytest.approx(1e-3) and lrs[2] < 1e-3


def test_lr_drops_and_scale_lr(kit, tmp_path):
    train(train_values(kit, tmp_path / "out", max_train_steps=4, lr_drops=[50], scale_lr=True,
                       lr_scheduler="constant"), tmp_path / "run")
    lrs = [e["value"] for e in events(tmp_path / "run") if e["event"] == "metric" and e["name"] == "lr"]
    scaled = 1e-3 * 2 ** 0.5  # batch 2, no accumulation
    # logged after each update, as kohya does: the rate of the next update (steps 3 and 4 use scaled / 10)
    assert lrs == pytest.approx([scaled, scaled / 10, scaled / 10, scaled / 10])


def test_sd2_v_model_trains(demo_kit, tmp_path):
    result = train(train_values(demo_kit("sd2v", 4, 1), tmp_path / "out", max_train_steps=2), tmp_path / "run")
    assert result["steps"] == 2
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "sd2 v-prediction" in log


@pytest.mark.parametrize("overrides, message", [
    ({"pretrained_model_name_or_path": "/nonexistent/model.safetensors"}, "/nonexistent/model.safetensors"),
    ({"train_data_dir": ["/nonexistent/data"]}, "/nonexistent/data"),
])
def test_bad_inputs_fail_with_clear_errors(kit, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(train_values(kit, tmp_path / "out", **overrides), tmp_path / "run")


def test_finished_model_is_never_overwritten(kit, uninterrupted, tmp_path):
    out, _ = uninterrupted
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="exists already"):
        train(train_values(kit, out), tmp_path / "run")
    assert (out / "model.safetensors").read_bytes() == before


def latest_state(output_dir: Path) -> Path | None:
    states = sorted(p for p in output_dir.glob("model-step*-state") if (p / "training_state.json").is_file())
    return states[-1] if states else None


def test_killed_run_resumes_from_its_last_state(kit, tmp_path):
    from core.jobs.runner import kill_job, run_state, start_job

    reference = tmp_path / "reference"
    train(train_values(kit, reference, max_train_steps=30), tmp_path / "ref-run")
    out = tmp_path / "out"
    run_dir = start_job("train", train_values(kit, out, max_train_steps=30, save_every_n_steps=3,
                                              save_state=True))
    deadline = time.time() + 120
    while latest_state(out) is None:
        assert time.time() < deadline and run_state(run_dir) in ("starting", "running"), \
            (run_dir / "log.txt").read_text() if (run_dir / "log.txt").exists() else "no log"
        time.sleep(0.02)
    kill_job(run_dir)  # kill -9 of the whole process tree, mid-run
    assert run_state(run_dir) == "killed"
    assert not (out / "model.safetensors").exists()
    train(train_values(kit, out, max_train_steps=30, resume=str(latest_state(out))), tmp_path / "run2")
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")


def test_two_processes_train_as_one(kit, tmp_path):
    from core.jobs.run_folder import RunFolder

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = validate(TrainConfig, train_values(kit, tmp_path / "out", max_train_steps=3), "test")
    RunFolder(run_dir).write_config("train", cfg)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "core", "train", "--config", str(run_dir / "config.json"), "--run-dir", str(run_dir)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log0 = (run_dir / "log.txt").read_text()
    log1 = (run_dir / "log.rank1.txt").read_text()
    assert "processes: 2" in log0
    checksums = [line.split(": ")[-1] for log in (log0, log1) for line in log.splitlines() if "checksum" in line]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert (tmp_path / "out" / "model.safetensors").is_file()
