"""Noise/target options and loss variants: exact values for given inputs (kohya sd-scripts behaviour)."""
import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from core.train.loss import debiased_weight, elementwise_loss, huber_c_for, min_snr_weight, reduce_loss, snr
from core.train.noise import (apply_zero_terminal_snr, offset_noise, perturbed_noise, pyramid_noise,
                              sample_timesteps, zero_terminal_snr_betas)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _fake_scheduler(alphas_cumprod, num_train_timesteps=1000):
    return SimpleNamespace(alphas_cumprod=torch.tensor(alphas_cumprod),
                           config=SimpleNamespace(num_train_timesteps=num_train_timesteps))


def _sd_scheduler(**kw):
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, **kw)


# ---- loss weights ---------------------------------------------------------------------------------

def test_snr_of_given_alphas_cumprod():
    sched = _fake_scheduler([0.8, 0.5, 0.2])
    assert snr(sched, torch.tensor([0, 1, 2, 1])).tolist() == pytest.approx([4.0, 1.0, 0.25, 1.0], rel=1e-6)


def test_min_snr_weight_eps_and_v_forms():
    s = torch.tensor([0.5, 1.0, 5.0, 20.0])
    assert min_snr_weight(s, 5.0, v_prediction=False).tolist() == pytest.approx([1.0, 1.0, 1.0, 0.25])
    assert min_snr_weight(s, 5.0, v_prediction=True).tolist() == pytest.approx([1 / 3, 0.5, 5 / 6, 5 / 21])


def test_debiased_weight_eps_and_v_forms_clamp_snr_at_1000():
    s = torch.tensor([4.0, 100.0, 2000.0, 0.25])
    assert debiased_weight(s, v_prediction=False).tolist() == pytest.approx([0.5, 0.1, 1 / math.sqrt(1000), 2.0])
    assert debiased_weight(s, v_prediction=True).tolist() == pytest.approx([0.2, 1 / 101, 1 / 1001, 0.8])


def test_huber_c_per_schedule():
    sched = _fake_scheduler([0.8, 0.5, 0.2], num_train_timesteps=1000)
    t = torch.tensor([0, 1, 2])
    assert huber_c_for(t, sched, 0.1, "constant").tolist() == pytest.approx([0.1] * 3)
    assert huber_c_for(t, sched, 0.1, "constant", huber_scale=2.0).tolist() == pytest.approx([0.2] * 3)
    # snr: sigma = sqrt((1 - a) / a) = 0.5, 1, 2 -> 0.9 / (1 + sigma)^2 + 0.1
    assert huber_c_for(t, sched, 0.1, "snr").tolist() == pytest.approx([0.5, 0.325, 0.2])
    # exponential: huber_c ** (t / T): 1 at t=0, sqrt(0.1) half way, huber_c at T
    exp = huber_c_for(torch.tensor([0, 500, 1000]), sched, 0.1, "exponential")
    assert exp.tolist() == pytest.approx([1.0, math.sqrt(0.1), 0.1], rel=1e-6)
    scaled = huber_c_for(torch.tensor([0, 1000]), sched, 0.1, "exponential", huber_scale=2.0)
    assert scaled.tolist() == pytest.approx([2.0, 0.2], rel=1e-6)
    assert huber_c_for(t, sched, 0.1, "snr", huber_scale=2.0).tolist() == pytest.approx([0.5, 0.325, 0.2])
    with pytest.raises(ValueError):
        huber_c_for(t, sched, 0.1, "cosine")


def test_elementwise_loss_by_hand():
    pred = torch.tensor([3.0, 0.0, 1.0, -2.0]).view(2, 1, 1, 2)
    target = torch.tensor([0.0, 0.0, 0.0, -2.0]).view(2, 1, 1, 2)
    assert elementwise_loss(pred, target, "l2").flatten().tolist() == [9.0, 0.0, 1.0, 0.0]
    assert elementwise_loss(pred, target, "l1").flatten().tolist() == [3.0, 0.0, 1.0, 0.0]
    # scalar c = 4: sqrt(3^2 + 4^2) - 4 = 1; sqrt(1 + 16) - 4 = 0.1231...
    r = math.sqrt(17) - 4
    assert elementwise_loss(pred, target, "huber", 4.0).flatten().tolist() == pytest.approx([8.0, 0.0, 8 * r, 0.0])
    smooth = elementwise_loss(pred, target, "smooth_l1", 4.0)
    assert smooth.flatten().tolist() == pytest.approx([2.0, 0.0, 2 * r, 0.0])
    # per-sample c = [4, 0.75]: sample 2, d = 1: sqrt(1 + 0.5625) - 0.75 = 0.5
    c = torch.tensor([4.0, 0.75])
    assert elementwise_loss(pred, target, "huber", c).flatten().tolist() == pytest.approx([8.0, 0.0, 0.75, 0.0])
    assert elementwise_loss(pred, target, "smooth_l1", c).flatten().tolist() == pytest.approx([2.0, 0.0, 1.0, 0.0])
    with pytest.raises(ValueError):
        elementwise_loss(pred, target, "huber", None)
    with pytest.raises(ValueError):
        elementwise_loss(pred, target, "l3")


def test_huber_is_close_to_l2_for_small_errors_with_large_c():
    pred, target = torch.tensor([[0.01, -0.02]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    huber = elementwise_loss(pred, target, "huber", 10.0)
    assert torch.allclose(huber, (pred - target) ** 2, rtol=1e-3)


def test_reduce_loss_means_non_batch_dims_then_weights_then_batch():
    loss = torch.tensor([1.0, 3.0, 2.0, 6.0]).view(2, 1, 1, 2)  # per-sample means 2, 4
    assert reduce_loss(loss, None).item() == 3.0
    assert reduce_loss(loss, torch.tensor([1.0, 0.5])).item() == 2.0
    assert reduce_loss(loss, torch.tensor([0.0, 1.0])).item() == 2.0


# ---- zero terminal SNR ----------------------------------------------------------------------------

def test_zero_terminal_snr_matches_diffusers_rescale():
    ours = zero_terminal_snr_betas(_sd_scheduler().betas)
    reference = _sd_scheduler(rescale_betas_zero_snr=True).betas
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-6)  # diffusers computes in float32, we in float64
    assert ours[-1].item() == 1.0 and ours[0].item() == pytest.approx(0.00085, rel=1e-5)


def test_apply_zero_terminal_snr_last_step_zero_first_unchanged_linear_in_sqrt():
    sched = _sd_scheduler()
    old = sched.alphas_cumprod.clone()
    apply_zero_terminal_snr(sched)
    new = sched.alphas_cumprod
    assert new[-1].item() == 0.0 and snr(sched, torch.tensor([999])).item() == 0.0
    assert new[0].item() == pytest.approx(old[0].item(), rel=1e-6)
    assert bool((new[1:] < new[:-1]).all())
    # sqrt(alpha_bar) is shifted and rescaled linearly: new = (old - old_T) * old_0 / (old_0 - old_T)
    s_old, s_new = old.double().sqrt(), new.double().sqrt()
    expected = (s_old - s_old[-1]) * s_old[0] / (s_old[0] - s_old[-1])
    assert torch.allclose(s_new, expected, atol=1e-5)
    assert torch.allclose(sched.alphas, 1 - sched.betas) and torch.allclose(torch.cumprod(sched.alphas, 0), new)
    # add_noise at the last step is pure noise
    latents, noise = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    assert torch.allclose(sched.add_noise(latents, noise, torch.tensor([999])), noise)


# ---- noise ----------------------------------------------------------------------------------------

def test_offset_noise_shifts_each_sample_channel_by_seeded_constant():
    latents, noise = torch.randn(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    out = offset_noise(noise, latents, 0.5, random_strength=False, generator=_gen(3))
    expected = 0.5 * torch.randn((2, 4, 1, 1), generator=_gen(3))
    assert torch.allclose(out, expected.expand(2, 4, 8, 8))
    g = _gen(3)
    strength = torch.rand(1, generator=g) * 0.5
    expected = strength * torch.randn((2, 4, 1, 1), generator=g)
    out = offset_noise(noise, latents, 0.5, random_strength=True, generator=_gen(3))
    assert torch.allclose(out, expected.expand(2, 4, 8, 8))
    assert offset_noise(noise, latents, 0.0, True) is noise


def test_offset_noise_moves_channel_means_not_per_pixel_structure():
    noise = torch.randn(8, 4, 16, 16, generator=_gen(1))
    out = offset_noise(noise, noise, 1.0, False, generator=_gen(2))
    diff = out - noise
    assert torch.allclose(diff, diff.mean(dim=(2, 3), keepdim=True).expand_as(diff), atol=1e-6)
    assert diff.mean(dim=(2, 3)).std() > 0.5


def _neighbour_corr(x):
    a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def test_pyramid_noise_shape_unit_std_low_frequency_and_seeded():
    noise = torch.randn(2, 4, 64, 64, generator=_gen(0))
    before = noise.clone()
    out = pyramid_noise(noise, 6, 0.8, generator=_gen(5))
    assert out.shape == noise.shape and torch.equal(noise, before)
    assert out.std().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(out, pyramid_noise(noise, 6, 0.8, generator=_gen(5)))
    assert not torch.equal(out, pyramid_noise(noise, 6, 0.8, generator=_gen(6)))
    assert abs(_neighbour_corr(noise)) < 0.05 and _neighbour_corr(out) > 0.15
    assert pyramid_noise(noise, 0, 0.8) is noise


def test_perturbed_noise_adds_gamma_scaled_extra_noise():
    noise = torch.randn(2, 4, 8, 8, generator=_gen(0))
    out = perturbed_noise(noise, 0.1, random_strength=False, generator=_gen(7))
    assert torch.allclose(out - noise, 0.1 * torch.randn((2, 4, 8, 8), generator=_gen(7)), atol=1e-6)
    g = _gen(7)
    strength = torch.rand(1, generator=g) * 0.1
    expected = strength * torch.randn((2, 4, 8, 8), generator=g)
    out = perturbed_noise(noise, 0.1, random_strength=True, generator=_gen(7))
    assert torch.allclose(out - noise, expected, atol=1e-6)
    assert perturbed_noise(noise, 0.0, False) is noise


def test_sample_timesteps_within_range_and_all_values_hit():
    t = sample_timesteps(5000, 100, 110, "cpu", generator=_gen(0))
    assert t.dtype == torch.long and t.shape == (5000,)
    assert set(t.tolist()) == set(range(100, 110))
    assert torch.equal(t, sample_timesteps(5000, 100, 110, "cpu", generator=_gen(0)))
    assert set(sample_timesteps(2000, 0, 3, "cpu").tolist()) == {0, 1, 2}
    with pytest.raises(ValueError):
        sample_timesteps(4, 500, 500, "cpu")
