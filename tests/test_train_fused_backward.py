"""fused_backward_pass: Adafactor steps each parameter in its post-accumulate-grad hook (core/train/fused.py).

A fused run trains the weights an unfused one does (same seed, same data), resumes exactly, keeps EMA and the
lr schedule, and is refused with the field to change where it cannot work."""
import copy

import pytest
import torch
from trainkit import assert_same_weights, events, train, train_values, unet_weights

from core.config import TrainConfig, validate
from core.train.fused import fuse_into_backward, step_parameter
from core.train.optimizers import make_optimizer
from core.train.preflight import check_training
from core.train.start_checks import StartRefused, fused_backward_problems

# Adafactor with an lr the schedule sets (not its relative step), so warm-up and decay are exercised too.
SCHEDULED = {"optimizer_type": "Adafactor", "optimizer_args": ["relative_step=False", "scale_parameter=False",
                                                               "warmup_init=False"],
             "lr_scheduler": "cosine", "lr_warmup_steps": 2, "max_grad_norm": 0.0}


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


def _run(kit, out, **overrides):
    values = train_values(kit, out, save_every_n_steps=3, save_state=True, use_ema=True, ema_decay=0.9,
                          train_text_encoder=True, learning_rate_te=5e-4, **{**SCHEDULED, **overrides})
    return train(values, out / "run")


@pytest.fixture(scope="module")
def runs(kit, tmp_path_factory):
    """6 steps of the same run unfused and fused (U-Net and text encoder, EMA, cosine with warm-up), each
    saving a resumable state at step 3."""
    plain, fused = tmp_path_factory.mktemp("unfused"), tmp_path_factory.mktemp("fused")
    _run(kit, plain)
    _run(kit, fused, fused_backward_pass=True)
    return plain, fused


def _lrs(run_dir):
    return [e["value"] for e in events(run_dir) if e["event"] == "metric" and e["name"] == "lr"]


def _all_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_fused_run_trains_the_weights_of_an_unfused_run(runs):
    plain, fused = runs
    for name in ("model.safetensors", "model-ema.safetensors", "model-step00000003.safetensors"):
        a, b = _all_weights(plain / name), _all_weights(fused / name)
        assert a.keys() == b.keys()
        changed = unet_weights(plain / name)
        assert changed
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7, msg=f"{name}: {key}")
    assert _lrs(fused / "run") == pytest.approx(_lrs(plain / "run")) and len(_lrs(fused / "run")) == 6
    log = (fused / "run" / "log.txt").read_text()
    assert "fused backward pass: each weight is updated as soon as its gradient is computed" in log


def test_fused_run_changes_the_weights(kit, runs):
    _, fused = runs
    before = unet_weights(kit / "model.safetensors")
    after = unet_weights(fused / "model.safetensors")
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before if k in after)


def test_fused_run_resumes_exactly(kit, runs, tmp_path):
    _, fused = runs
    out = tmp_path / "resumed"
    result = _run(kit, out, fused_backward_pass=True, resume=str(fused / "model-step00000003-state"))
    assert result["steps"] == 6
    assert_same_weights(fused / "model.safetensors", out / "model.safetensors")
    assert_same_weights(fused / "model-ema.safetensors", out / "model-ema.safetensors")


def test_relative_step_adafactor_logs_the_rate_it_uses_when_fused(kit, tmp_path):
    """transformers' schedule proxy reads the rate only while a gradient is held; fused, none outlives the
    backward, and the logged lr would be 0."""
    logged = {}
    for fused in (False, True):
        out = tmp_path / f"fused-{fused}"
        train(train_values(kit, out, max_train_steps=2, optimizer_type="Adafactor", fused_backward_pass=fused),
              out / "run")
        logged[fused] = _lrs(out / "run")
    assert logged[True] == pytest.approx(logged[False]) and all(lr > 0 for lr in logged[True])


def _model_and_optimizer(seed=0, **args):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    return model, make_optimizer("Adafactor", model.parameters(), 1e-2,
                                 {"relative_step": False, "scale_parameter": False, **args})


def test_max_grad_norm_clips_each_parameters_gradient_on_its_own():
    """As sd-scripts: the norm of all gradients together is known only after every parameter was stepped."""
    reference, optimizer = _model_and_optimizer()
    fused_model = copy.deepcopy(reference)
    fused_optimizer = make_optimizer("Adafactor", fused_model.parameters(), 1e-2,
                                     {"relative_step": False, "scale_parameter": False})
    fuse_into_backward(fused_optimizer, 0.01)
    for _ in range(3):
        x = torch.randn(5, 8)
        reference(x).pow(2).mean().backward()
        for param in reference.parameters():
            torch.nn.utils.clip_grad_norm_(param, 0.01)
        optimizer.step()
        optimizer.zero_grad()
        fused_model(x).pow(2).mean().backward()
        assert all(p.grad is None for p in fused_model.parameters())  # freed in the backward
    for a, b in zip(reference.parameters(), fused_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-8)
    assert fused_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


def test_one_parameter_step_reads_its_group_as_it_is_now_and_restores_the_groups():
    model, optimizer = _model_and_optimizer()
    groups = optimizer.param_groups
    weight = model[0].weight
    before = weight.detach().clone()
    weight.grad = torch.ones_like(weight)
    optimizer.param_groups[0]["lr"] = 0.0  # as a schedule at its first warm-up step
    step_parameter(optimizer, weight, 0)
    assert optimizer.param_groups is groups and len(groups[0]["params"]) == 4
    assert torch.equal(weight, before)  # lr 0: no change
    assert optimizer.state[weight]["step"] == 1 and not optimizer.state[model[2].weight]


def test_only_adafactor_is_fused():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="Adafactor only, not AdamW"):
        fuse_into_backward(torch.optim.AdamW(model.parameters()), 0)


REFUSED = [
    ({"optimizer_type": "AdamW"}, 1, "optimizer_type", "works with optimizer_type Adafactor only"),
    ({"optimizer_type": "Adafactor", "gradient_accumulation_steps": 2}, 1, "gradient_accumulation_steps",
     "set gradient_accumulation_steps to 1"),
    ({"optimizer_type": "Adafactor", "train_lora": True}, 1, "train_lora", "is for full fine-tuning"),
    ({"optimizer_type": "Adafactor", "mixed_precision": "fp16"}, 1, "mixed_precision", "choose bf16 or no"),
    ({"optimizer_type": "Adafactor", "num_processes": 2}, 2, "num_processes", "runs in one process"),
    ({"optimizer_type": "Adafactor"}, 2, "num_processes", "runs in one process"),  # accelerate launch of 2
    ({"optimizer_type": "Adafactor", "accelerate_config_file": "/cfg/deepspeed.yaml"}, 1, "accelerate_config_file",
     "DeepSpeed and FSDP"),
]


@pytest.mark.parametrize("settings, processes, field, words", REFUSED, ids=[case[2] + str(case[1]) for case in REFUSED])
def test_refused_where_it_cannot_work_naming_the_field(kit, tmp_path, settings, processes, field, words):
    cfg = validate(TrainConfig, train_values(kit, tmp_path / "out", fused_backward_pass=True, **settings), "test")
    [problem] = fused_backward_problems(cfg, processes)
    assert problem.field == field and problem.severity == "error" and words in problem.message
    assert "turn off fused_backward_pass" in problem.message
    assert not fused_backward_problems(cfg.model_copy(update={"fused_backward_pass": False}), processes)


def test_allowed_with_adafactor_in_one_process_and_text_encoder_or_bf16(kit, tmp_path):
    values = train_values(kit, tmp_path / "out", fused_backward_pass=True, optimizer_type="Adafactor",
                          mixed_precision="bf16", full_bf16=True, train_text_encoder=True)
    cfg = validate(TrainConfig, values, "test")
    assert not fused_backward_problems(cfg, 1)


def test_check_settings_lists_the_refusals_and_the_trainer_refuses_with_the_same_words(kit, tmp_path):
    values = train_values(kit, tmp_path / "out", max_train_steps=1, fused_backward_pass=True,
                          gradient_accumulation_steps=2)
    reported = [str(p) for p in check_training(values).problems if p.severity == "error"]
    assert [line.split(":")[0] for line in reported] == ["optimizer_type", "gradient_accumulation_steps"]
    with pytest.raises(StartRefused) as refused:
        train(values, tmp_path / "run")
    assert str(refused.value).splitlines() == reported
