"""Held-out validation: the split, the fixed validation loss on the tiny demo model (pixels and
latent cache), plateau decisions for auto_stop, and lr reductions that survive a LambdaLR."""
from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from core.config import TrainConfig, validate
from core.jobs.protocol import JobContext
from core.models.sd import load_sd_model
from core.models.text import encode_prompts, tokenize_prompts
from core.train.data import Example, build_examples, prepare_latent_cache
from core.train.schedules import make_scheduler
from core.train.validation import Plateau, scale_learning_rates, split_validation, validation_batches, validation_loss


def fake_examples(n: int) -> list[Example]:
    return [Example(Path(f"/data/img{i:03d}.png"), (64, 64), f"caption {i}", None) for i in range(n)]


def names(examples: list[Example]) -> list[str]:
    return [e.image.name for e in examples]


# --- split -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n, fraction, held_out", [
    (10, 0.2, 2), (10, 0.01, 1), (10, 0.99, 9), (2, 0.5, 1), (3, 0.9, 2), (7, 0.3, 2), (8, 0.125, 1),
    (100, 0.1, 10)])
def test_split_sizes(n, fraction, held_out):
    train, val = split_validation(fake_examples(n), fraction, seed=1)
    assert (len(train), len(val)) == (n - held_out, held_out)


def test_split_is_deterministic_order_independent_disjoint_and_complete():
    examples = fake_examples(20)
    train, val = split_validation(examples, 0.25, seed=5)
    assert split_validation(examples, 0.25, seed=5) == (train, val)
    assert sorted(names(train) + names(val)) == names(examples)
    assert not set(names(train)) & set(names(val))
    shuffled = examples[:]
    random.Random(0).shuffle(shuffled)
    train2, val2 = split_validation(shuffled, 0.25, seed=5)
    assert set(names(val2)) == set(names(val))
    # both lists keep the input order
    assert names(train2) == [n for n in names(shuffled) if n in set(names(train))]
    assert names(val2) == [n for n in names(shuffled) if n in set(names(val))]
    assert len({tuple(names(split_validation(examples, 0.25, seed=s)[1])) for s in range(5)}) > 1


def test_split_ignores_repeats_and_keeps_all_without_fraction():
    examples = [Example(e.image, e.bucket, e.caption, None, repeats=1 + i) for i, e in enumerate(fake_examples(6))]
    assert split_validation(examples, 0.0, seed=0) == (examples, [])
    assert len(split_validation(examples, 0.5, seed=0)[1]) == 3


def test_split_errors():
    with pytest.raises(ValueError, match="add images"):
        split_validation(fake_examples(1), 0.2, seed=0)
    with pytest.raises(ValueError, match="at least 2 images"):
        split_validation([], 0.2, seed=0)
    for fraction in (-0.1, 1.0):
        with pytest.raises(ValueError, match="fraction"):
            split_validation(fake_examples(5), fraction, seed=0)


# --- validation loss -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


@pytest.fixture(scope="module")
def model(kit):
    return load_sd_model(str(kit / "model"))


def make_cfg(kit, tmp_path, **overrides) -> TrainConfig:
    values = {"pretrained_model_name_or_path": str(kit / "model"), "train_data_dir": [str(kit / "dataset")],
              "output_dir": str(tmp_path / "out"), "latents_dir": str(tmp_path / "cache"),
              "max_resolution": "128,128", "min_bucket_reso": 64, "max_bucket_reso": 256,
              "cache_latents": False, **overrides}
    return validate(TrainConfig, values, "test")


@pytest.fixture(scope="module")
def examples(kit, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("validation-pixels")
    with JobContext(tmp_path / "run", echo=False) as ctx:
        return build_examples(make_cfg(kit, tmp_path), ctx)


def encoder(model):
    def encode(captions: list[str]) -> torch.Tensor:
        return encode_prompts(model.text_encoder, tokenize_prompts(model.tokenizer, captions, None), None), None
    return encode


def loss(examples, unet, model, **kwargs) -> float:
    return validation_loss(examples, unet, encoder(model), model, **kwargs)


def test_examples_have_a_shared_bucket(examples):
    """The batching test below means something only if some batch holds several images."""
    assert len(examples) == 6 and all(e.cache is None for e in examples)
    assert max(len(b) for b in validation_batches(examples, 3)) > 1
    assert all(len({examples[i].bucket for i in b}) == 1 for b in validation_batches(examples, 3))


def test_validation_loss_is_fixed_and_independent_of_batching(examples, model):
    first = loss(examples, model.unet, model)
    assert torch.isfinite(torch.tensor(first)) and first > 0
    torch.manual_seed(1234)
    torch.randn(100)  # whatever ran before does not matter
    assert loss(examples, model.unet, model) == first
    assert loss(examples, model.unet, model, batch_size=3) == pytest.approx(first, rel=1e-6)
    assert loss(examples, model.unet, model, seed=1) != first
    assert loss(examples, model.unet, model, timesteps=(500,)) != first
    assert loss(examples, model.unet, model, caption_prefix="a photo of") != first


def test_validation_leaves_rng_mode_and_weights_alone(examples, model):
    unet = model.unet
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    unet.train()
    try:
        loss(examples, unet, model, batch_size=2)
        assert unet.training
        assert torch.equal(torch.get_rng_state(), rng)
        unet.eval()
        loss(examples[:2], unet, model)
        assert not unet.training
    finally:
        unet.eval()
    assert all(torch.equal(weights[k], v) for k, v in unet.state_dict().items())


def test_validation_loss_sees_weight_changes_and_v_prediction(examples, model, kit):
    before = loss(examples, model.unet, model)
    changed = copy.deepcopy(model.unet)
    with torch.no_grad():
        changed.conv_out.bias.add_(0.05)
    assert loss(examples, changed, model) != before
    v_model = load_sd_model(str(kit / "model"), v_parameterization=True)
    assert v_model.noise_scheduler.config.prediction_type == "v_prediction"
    v_loss = loss(examples, v_model.unet, v_model)
    assert torch.isfinite(torch.tensor(v_loss)) and v_loss != before


def test_validation_loss_from_the_latent_cache(examples, model, kit, tmp_path):
    cfg = make_cfg(kit, tmp_path, cache_latents=True)
    with JobContext(tmp_path / "run", echo=False) as ctx:
        prepare_latent_cache(cfg, ctx)
        cached = build_examples(cfg, ctx)
    assert [e.image for e in cached] == [e.image for e in examples]
    assert all(e.cache is not None and e.cache.is_file() for e in cached)
    value = loss(cached, model.unet, model)
    assert torch.isfinite(torch.tensor(value))
    assert loss(cached, model.unet, model, batch_size=3) == pytest.approx(value, rel=1e-6)
    assert loss(cached, model.unet, model) == value
    # images trained from pixels are encoded with the posterior sample the cache job stores
    assert loss(examples, model.unet, model) == pytest.approx(value, rel=1e-4)


def test_validation_loss_errors(examples, model):
    with pytest.raises(ValueError, match="no validation images"):
        loss([], model.unet, model)
    with pytest.raises(ValueError, match="timesteps"):
        loss(examples, model.unet, model, timesteps=(100, 1000))
    with pytest.raises(ValueError, match="batch_size"):
        loss(examples, model.unet, model, batch_size=0)


# --- plateau and lr reductions -----------------------------------------------------------------

VALUES = [10.0, 9.875, 9.5, 9.25, 9.5, 8.75, float("nan"), 9.0, 9.0]
DECISIONS = ["improved", "wait", "improved", "wait", "reduce", "improved", "wait", "stop", "stop"]


def test_plateau_decisions():
    plateau = Plateau(patience=2, min_delta=0.25, max_reductions=1)
    assert plateau.best is None
    decisions = [plateau.update(v) for v in VALUES]
    # 9.875 is within min_delta of 10; 9.25 is exactly best - min_delta (not below it); NaN never improves
    assert decisions == DECISIONS
    assert (plateau.best, plateau.reductions, plateau.bad_evaluations) == (8.75, 1, 3)


def test_plateau_counts_and_without_reductions():
    plateau = Plateau(patience=3, min_delta=0.0, max_reductions=2, factor=0.5)
    assert [plateau.update(v) for v in (1.0, 1.0, 1.0, 1.0)] == ["improved", "wait", "wait", "reduce"]
    assert (plateau.reductions, plateau.bad_evaluations) == (1, 0)
    assert plateau.update(0.999) == "improved" and plateau.bad_evaluations == 0
    stopper = Plateau(patience=1, min_delta=0.0, max_reductions=0)
    assert [stopper.update(v) for v in (3.0, 2.0, 2.0)] == ["improved", "improved", "stop"]
    for bad in ({"patience": 0}, {"min_delta": -1.0}, {"max_reductions": -1}, {"factor": 1.0}):
        with pytest.raises(ValueError, match="plateau settings"):
            Plateau(**{"patience": 2, "min_delta": 0.0, "max_reductions": 1, **bad})


@pytest.mark.parametrize("split", [0, 1, 4, 6])
def test_plateau_state_round_trip(split):
    plateau = Plateau(patience=2, min_delta=0.25, max_reductions=1)
    for v in VALUES[:split]:
        plateau.update(v)
    resumed = Plateau(patience=2, min_delta=0.25, max_reductions=1)
    resumed.load_state_dict(json.loads(json.dumps(plateau.state_dict())))
    assert resumed.state_dict() == plateau.state_dict()
    assert [resumed.update(v) for v in VALUES[split:]] == DECISIONS[split:]


def sgd_with_schedule(lr: float):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    return optimizer, make_scheduler(optimizer, "cosine", 20, 4, drops=(75,))


def step(optimizer, scheduler) -> None:
    optimizer.step()
    scheduler.step()


def test_scale_learning_rates_persists_through_a_lambda_lr_and_a_resume():
    factor = 0.1
    optimizer, scheduler = sgd_with_schedule(1e-3)
    reference_opt, reference = sgd_with_schedule(1e-3 * factor)  # the unreduced schedule, times factor
    for _ in range(8):
        step(optimizer, scheduler)
        step(reference_opt, reference)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(reference_opt.param_groups[0]["lr"] / factor)
    scale_learning_rates(optimizer, scheduler, factor)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(reference_opt.param_groups[0]["lr"], rel=1e-12)
    for _ in range(4):
        step(optimizer, scheduler)
        step(reference_opt, reference)
        assert optimizer.param_groups[0]["lr"] == reference_opt.param_groups[0]["lr"]
        assert scheduler.get_last_lr() == reference.get_last_lr()

    resumed_opt, resumed = sgd_with_schedule(1e-3)  # a resumed run builds both anew, then loads them
    resumed_opt.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(scheduler.state_dict())
    for _ in range(6):  # up to step 18 of 20 (cosine reaches 0 at 20)
        step(resumed_opt, resumed)
        step(reference_opt, reference)
        assert resumed_opt.param_groups[0]["lr"] == reference_opt.param_groups[0]["lr"] > 0
