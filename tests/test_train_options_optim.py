"""Optimizers by name with optimizer_args, scale_lr, and the lr schedules at exact steps."""
import math

import pytest
import torch

from core.train.optimizers import OPTIMIZERS, make_optimizer, parse_optimizer_args, scaled_lr
from core.train.schedules import lr_lambda, make_scheduler, steps_of


def _at(name, steps, total=100, warmup=10, **kw):
    return [lr_lambda(name, s, total, warmup, **kw) for s in steps]


def test_constant_ignores_warmup_and_constant_with_warmup_ramps():
    assert _at("constant", [0, 5, 99]) == [1.0, 1.0, 1.0]
    assert _at("constant_with_warmup", [0, 5, 10, 99]) == [0.0, 0.5, 1.0, 1.0]


def test_cosine_with_decay_steps_holds_then_decays_over_the_last_steps():
    assert _at("cosine", [5, 50, 80, 90, 100], decay_steps=20) == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])


def test_cosine_with_restarts_restarts_at_cycle_boundaries():
    values = _at("cosine_with_restarts", [0, 25, 49, 50, 75, 99, 100], warmup=0, num_cycles=2)
    assert values[:2] == pytest.approx([1.0, 0.5])
    assert values[2] < 0.01 and values[3] == pytest.approx(1.0)
    assert values[4] == pytest.approx(0.5) and values[5] < 0.01 and values[6] == 0.0


def test_polynomial_power_two():
    assert _at("polynomial", [5, 10, 60, 85, 110], total=110, power=2.0) == pytest.approx(
        [0.5, 1.0, 0.25, 0.0625, 0.0])


def test_drops_divide_by_ten_at_each_percentage():
    assert _at("constant", [49, 50, 74, 75, 99], drops=[50, 75]) == pytest.approx([1, 0.1, 0.1, 0.01, 0.01])
    assert lr_lambda("linear", 60, 100, 0, drops=[50]) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="lr_drops"):
        lr_lambda("constant", 0, 100, 0, drops=[150])


@pytest.mark.parametrize("name", ["constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"])
def test_same_curves_as_diffusers(name):
    from diffusers.optimization import get_scheduler
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    kw = {"num_cycles": 3} if name == "cosine_with_restarts" else {}
    theirs = get_scheduler(name, optimizer, num_warmup_steps=7, num_training_steps=50, **kw)
    for step in range(55):
        expected = theirs.get_last_lr()[0]
        assert lr_lambda(name, step, 50, 7, **kw) == pytest.approx(expected, abs=1e-6), step
        optimizer.step()
        theirs.step()


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="cosine_with_restarts"):
        lr_lambda("cosin", 0, 10, 0)


def test_warmup_fraction_or_steps():
    assert [steps_of(v, 200) for v in (0, 0.1, 0.29, 1, 20.0)] == [0, 20, 58, 1, 20]
    assert steps_of(0.29, 100) == 29


def test_make_scheduler_follows_lr_lambda_and_resumes_from_its_state():
    def build():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
        return optimizer, make_scheduler(optimizer, "cosine", 40, 4, drops=[50])
    optimizer, scheduler = build()
    for step in range(25):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * lr_lambda("cosine", step, 40, 4, drops=[50]))
        optimizer.step()
        scheduler.step()
    _, resumed = build()
    resumed.load_state_dict(scheduler.state_dict())
    resumed.step()
    scheduler.step()
    assert resumed.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    assert resumed.get_last_lr()[0] == pytest.approx(0.2 * lr_lambda("cosine", 26, 40, 4, drops=[50]))


def _step(optimizer, linear):
    before = linear.weight.detach().clone()
    linear(torch.randn(3, linear.in_features)).pow(2).sum().backward()
    optimizer.step()
    assert torch.isfinite(linear.weight).all()
    return (linear.weight - before).abs().max().item()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_takes_a_step_on_cpu(name):
    if name == "Prodigy":
        pytest.importorskip("prodigyopt")
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 64)  # 8192 weights: over bitsandbytes' 4096 threshold for 8-bit state
    optimizer = make_optimizer(name, linear.parameters(), 1.0 if name == "Prodigy" else 1e-3, {})
    assert _step(optimizer, linear) > 0
    if name.endswith("8bit"):
        assert optimizer.state[linear.weight]["state1"].dtype == torch.uint8


def test_optimizer_args_reach_the_optimizer_and_unknown_ones_are_refused():
    linear = torch.nn.Linear(4, 2)
    sgd = make_optimizer("SGDNesterov", linear.parameters(), 0.1, {})
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is True
    sgd = make_optimizer("SGDNesterov", linear.parameters(), 0.1, {"momentum": 0.5, "weight_decay": 0.01})
    assert sgd.defaults["momentum"] == 0.5 and sgd.defaults["weight_decay"] == 0.01
    adamw = make_optimizer("AdamW", linear.parameters(), 0.1, parse_optimizer_args(["betas=(0.8,0.9)"]))
    assert adamw.defaults["betas"] == (0.8, 0.9)
    with pytest.raises(ValueError, match=r"weight_decy not accepted by AdamW; it accepts: betas, eps, weight_decay"):
        make_optimizer("AdamW", linear.parameters(), 0.1, {"weight_decy": 0.1})
    with pytest.raises(ValueError, match="choose one of AdamW"):
        make_optimizer("Adam9bit", linear.parameters(), 0.1, {})


def test_adafactor_relative_step_is_kohyas_default_and_schedules_itself():
    linear = torch.nn.Linear(4, 2)
    groups = [{"params": [linear.weight], "lr": 1e-3}, {"params": [linear.bias], "lr": 1e-4}]
    optimizer = make_optimizer("Adafactor", groups, 1e-3, {})
    assert optimizer.defaults["relative_step"] is True and optimizer.defaults["lr"] is None
    assert all(group["lr"] is None for group in optimizer.param_groups)
    scheduler = make_scheduler(optimizer, "cosine", 100, 10)
    from transformers.optimization import AdafactorSchedule
    assert isinstance(scheduler, AdafactorSchedule)
    rms = linear.weight.detach().pow(2).mean().sqrt().item()
    assert _step(optimizer, linear) > 0
    scheduler.step()  # reports Adafactor's own lr: min(1e-2, 1/sqrt(step)) x RMS(weight) (scale_parameter)
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-2 * rms)


def test_adafactor_fixed_lr_and_warmup_init_forcing_relative_step():
    linear = torch.nn.Linear(4, 2)
    fixed = make_optimizer("Adafactor", linear.parameters(), 1e-3,
                           {"relative_step": False, "scale_parameter": False})
    assert fixed.defaults["lr"] == 1e-3
    assert isinstance(make_scheduler(fixed, "constant_with_warmup", 100, 10), torch.optim.lr_scheduler.LambdaLR)
    assert type(make_scheduler(fixed, "constant", 100, 10)).__name__ == "LambdaLR"
    forced = make_optimizer("Adafactor", linear.parameters(), 1e-3, {"relative_step": False, "warmup_init": True})
    assert forced.defaults["relative_step"] is True


def test_parse_optimizer_args():
    assert parse_optimizer_args(["weight_decay=0.01", "betas=(0.9, 0.99)", "decouple=True", " d0 = 1e-6",
                                 "mode=fast", "eps=None"]) == {
        "weight_decay": 0.01, "betas": (0.9, 0.99), "decouple": True, "d0": 1e-6, "mode": "fast", "eps": None}
    for bad in ("weight_decay", "=3", "wd=", "weight decay=1"):
        with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
            parse_optimizer_args(["eps=1e-8", bad])


def test_scaled_lr():
    assert scaled_lr(1e-4, 4, 4) == pytest.approx(4e-4)
    assert scaled_lr(1e-4, 2, 1) == pytest.approx(1e-4 * math.sqrt(2))
