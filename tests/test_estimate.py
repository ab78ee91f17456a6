"""The memory estimate (core/estimate): parameter counts of the real architectures on the meta device, optimizer
state against the real optimizers, LoRA sizes, the activation table, savers, the CLI, and the measured figures a
training run records beside its estimate."""
import json
import math

import pytest
import torch

from core.estimate import activations
from core.estimate.activations import Measured, Shape, lookup, measure, remember
from core.estimate.budget import estimate, unet_inputs, unet_shape
from core.estimate.cards import card_bytes
from core.estimate.check import check_estimate
from core.estimate.measured import TRACE_CPU_ALLOCATOR, CpuAllocatorTrace, compare, expected_rate, remember_rate
from core.estimate.optimizer_state import state_bytes, step_temporaries
from core.estimate.savers import candidates
from core.estimate.skeleton import estimate_config, mark_trained, meta_model, model_shape
from core.estimate.verdict import verdict
from core.models.lora import _suffixes, target_modules
from core.train.preflight import planned_steps
from tests.trainkit import train, train_values

# Published parameter counts (diffusers / transformers models of the released checkpoints).
COUNTS = {
    "sd1": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
    "sd2": {"unet": 865_910_724, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}
RESOLUTION = {"sd1": "512,512", "sd2": "768,768", "sdxl": "1024,1024"}


@pytest.mark.parametrize("arch", sorted(COUNTS))
def test_parameter_counts_of_the_real_architectures_on_the_meta_device(arch):
    cfg = estimate_config({"max_resolution": RESOLUTION[arch]})
    shape = model_shape(cfg)
    assert shape.arch == arch and shape.assumed and "no model chosen" in shape.source
    model = meta_model(shape)
    for part, count in COUNTS[arch].items():
        params = list(getattr(model, part).parameters())
        assert sum(p.numel() for p in params) == count, part
        assert all(p.device.type == "meta" for p in params)


def test_weights_in_the_dtypes_the_trainer_places_them():
    full = estimate(estimate_config({"mixed_precision": "fp16", "cache_latents": True}), allow_measure=False)
    parts = {p.label: p for p in full.weights}
    assert parts["U-Net"].bytes == COUNTS["sd1"]["unet"] * 4  # trained: fp32 master weights
    assert parts["text encoder"].bytes == COUNTS["sd1"]["text_encoder"] * 2  # frozen: the compute dtype
    assert parts["VAE"].bytes == COUNTS["sd1"]["vae"] * 2
    grads = next(p for p in full.training if p.label == "gradients")
    assert grads.bytes == COUNTS["sd1"]["unet"] * 4
    adam = next(p for p in full.training if p.label.startswith("optimizer state"))
    assert adam.bytes == 2 * COUNTS["sd1"]["unet"] * 4
    bf16 = estimate(estimate_config({"mixed_precision": "bf16", "full_bf16": True}), allow_measure=False)
    assert {p.label: p.bytes for p in bf16.weights}["U-Net"] == COUNTS["sd1"]["unet"] * 2
    cached = estimate(estimate_config({"cache_text_encoder_outputs": True}), allow_measure=False)
    assert "text encoder" not in {p.label for p in cached.weights}  # on the CPU once captions are encoded
    assert cached.peak < estimate(estimate_config({}), allow_measure=False).peak


def _real_state_bytes(optimizer_name: str, args: dict | None = None) -> tuple[int, list[tuple]]:
    """Bytes of the state a real optimizer keeps after one step over a small model (fp32 weights, on the CPU)."""
    from core.train.optimizers import make_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 128), torch.nn.Conv2d(4, 48, 3), torch.nn.LayerNorm(40))
    for p in model.parameters():
        torch.nn.init.normal_(p)  # pretrained weights (Prodigy keeps a scalar p0 for an all-zero tensor)
        p.grad = torch.randn_like(p)
    optimizer = make_optimizer(optimizer_name, model.parameters(), 1e-3, args or {})
    optimizer.step()
    total = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.numel() > 1 and key not in ("qmap1", "qmap2"):
                total += value.numel() * value.element_size()
    return total, [tuple(p.shape) for p in model.parameters()]


@pytest.mark.parametrize("name", ["AdamW", "SGDNesterov", "Adafactor", "Prodigy", "AdamW8bit", "Lion", "Lion8bit"])
def test_optimizer_state_equals_the_real_optimizers(name):
    pytest.importorskip("bitsandbytes") if "8bit" in name or name == "Lion" else None
    real, shapes = _real_state_bytes(name)
    assert state_bytes(name, shapes, 4) == real


def test_optimizer_state_rules():
    n = 1024 * 1024
    assert state_bytes("AdamW", [(1024, 1024)], 4) == 8 * n
    assert state_bytes("AdamW", [(1024, 1024)], 2) == 4 * n  # full_fp16: states in the weights' dtype
    assert state_bytes("AdamW8bit", [(1024, 1024)], 4) == 2 * (n + n // 256 * 4)
    assert state_bytes("AdamW8bit", [(64,)], 4) == 2 * 64 * 4  # small tensors keep 32-bit states
    assert state_bytes("Lion", [(1024, 1024)], 4) == 4 * n
    assert state_bytes("Adafactor", [(1024, 1024)], 4) == (1024 + 1024) * 4  # factored: rows + columns
    assert state_bytes("Prodigy", [(1024, 1024)], 4) == 16 * n
    shapes = [(1024, 1024), (2048, 1024)]
    assert step_temporaries("AdamW", shapes, 4) == 3 * n * 4  # CUDA's foreach: one copy of the whole group
    assert step_temporaries("AdamW", shapes, 4, one_at_a_time=True) == (n + 2 * 2 * n) * 4  # see below
    assert step_temporaries("AdamW8bit", shapes, 4) == 0  # in place on CUDA
    assert step_temporaries("AdamW8bit", shapes, 4, cpu=True) == 5 * 2 * n * 4  # fp32 copies of the largest


def test_adamw_step_temporaries_on_the_cpu_are_what_its_step_allocates():
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(256, 256), (512, 256), (64,)]]
    optimizer = torch.optim.AdamW(params, lr=1e-3)  # on the CPU: tensor by tensor, as the trainer's there
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()  # makes its state
    trace = CpuAllocatorTrace()
    optimizer.step()
    expected = step_temporaries("AdamW", [tuple(p.shape) for p in params], 4, one_at_a_time=True, cpu=True)
    assert expected == (256 * 256 + 2 * 512 * 256) * 4  # the first tensor's denom, the second's sqrt and denom
    assert 0 <= trace.peak() - expected < 64  # and a few scalars


@pytest.mark.parametrize("targets", ["attention", "attention_mlp", "all_linear_conv"])
def test_lora_network_size_is_rank_times_the_adapted_widths(targets):
    cfg = estimate_config({"train_lora": True, "network_dim": 8, "lora_targets": targets, "train_text_encoder": True})
    found = estimate(cfg, allow_measure=False)
    network = next(p for p in found.weights if p.label == "LoRA network")
    model = meta_model(model_shape(cfg))
    expected = 0
    for part in ("unet", "text_encoder"):
        module = getattr(model, part)
        for name in target_modules(module, _suffixes(targets, part)):
            layer = module.get_submodule(name)
            if isinstance(layer, torch.nn.Linear):
                expected += 8 * (layer.in_features + layer.out_features)
            else:  # a conv: down (rank, in, kh, kw), up (out, rank, 1, 1)
                expected += 8 * (layer.in_channels * math.prod(layer.kernel_size) + layer.out_channels)
    assert network.bytes == expected * 4  # adapters in fp32
    assert str(f"{expected:,}") in network.note


def test_lora_of_clip_skip_and_what_is_trained_follow_the_trainer():
    cfg = estimate_config({"train_lora": True, "network_dim": 4, "train_text_encoder": True, "clip_skip": 2})
    trained = mark_trained(meta_model(model_shape(cfg)), cfg)
    assert set(trained) == {"unet", "text_encoder"}
    full = mark_trained(meta_model(model_shape(estimate_config({}))), estimate_config({}))
    assert set(full) == {"unet"} and sum(p.numel() for p in full["unet"]) == COUNTS["sd1"]["unet"]


def test_activations_measured_under_fake_tensors(demo_kit):
    """The tiny demo U-Net's step: more with a larger batch, less with checkpointing, gradients only when trained."""
    kit = demo_kit("sd1")
    cfg = estimate_config({"pretrained_model_name_or_path": str(kit / "model"), "max_resolution": "64,64",
                           "min_bucket_reso": 64})
    shape = model_shape(cfg)
    assert not shape.assumed and shape.configs["unet"]["block_out_channels"] == [32, 64]
    one = measure(unet_shape(cfg, shape), shape.configs["unet"], **unet_inputs(shape))
    four = measure(unet_shape(cfg.model_copy(update={"train_batch_size": 4}), shape), shape.configs["unet"],
                   **unet_inputs(shape))
    checkpointed = measure(unet_shape(cfg.model_copy(update={"gradient_checkpointing": True}), shape),
                           shape.configs["unet"], **unet_inputs(shape))
    assert one.grads_at_peak > 0 and one.activations_peak > 0
    assert four.activations_peak > 3 * one.activations_peak
    assert checkpointed.activations_peak < one.activations_peak
    lora = cfg.model_copy(update={"train_lora": True})
    adapters = measure(unet_shape(lora, shape), shape.configs["unet"], **unet_inputs(shape))
    assert adapters.grads_at_peak < one.grads_at_peak / 10


def test_the_table_scales_a_shape_of_the_same_kind_and_remembers_measurements(tmp_path, monkeypatch):
    monkeypatch.setattr(activations, "SHIPPED_TABLE", tmp_path / "shipped.json")
    small = Shape("abc", "unet", 32, 32, 1, False, "float32", "float32", "full")
    remember(small, Measured(peak_above_weights=1000 + 400, grads_at_peak=1000, activations_peak=500))
    table = json.loads(activations.user_table_path().read_text())
    assert table["version"] == 1 and small.key in table["shapes"]
    exact = lookup(small)
    assert exact.exact and exact.peak_above_weights == 1400
    bigger = Shape("abc", "unet", 64, 64, 2, False, "float32", "float32", "full")  # 8x the batch x pixels
    scaled = lookup(bigger)
    assert not scaled.exact and scaled.scaled_from == small.key
    assert (scaled.grads_at_peak, scaled.peak_above_weights, scaled.activations_peak) == (1000, 1000 + 8 * 400, 4000)
    assert lookup(Shape("abc", "unet", 32, 32, 1, True, "float32", "float32", "full")) is None  # another kind


def test_verdict_and_cards():
    assert card_bytes(8) == 8_000_000_000
    assert verdict(5 * 2**30, card_bytes(8)) == "fits"
    assert verdict(7.2 * 2**30, card_bytes(8)) == "tight"
    assert verdict(9 * 2**30, card_bytes(8)) == "does not fit"


def test_savers_each_lower_the_peak_and_apply_as_form_changes():
    values = {"max_resolution": "512,512", "mixed_precision": "no", "optimizer_type": "AdamW",
              "train_batch_size": 2, "use_ema": True, "train_text_encoder": True}
    checked = check_estimate(values, card=8)
    assert checked.verdict == "does not fit" and checked.estimate.phase == "optimizer step"
    names = {s.name: s for s in checked.savers}
    assert {"8-bit optimizer (AdamW8bit)", "EMA on the CPU", "LoRA instead of a full fine-tune",
            "bf16 mixed precision", "full bf16 weights"} <= set(names)
    assert "cache text-encoder outputs" not in names  # refused with a trained text encoder
    assert "gradient checkpointing" not in names  # activations are not the peak: the optimizer step is
    n = COUNTS["sd1"]["unet"] + COUNTS["sd1"]["text_encoder"]
    eight_bit = names["8-bit optimizer (AdamW8bit)"]
    assert eight_bit.changes["optimizer_type"] == "AdamW8bit"
    assert eight_bit.saving > 8 * n - 2.1 * n  # 8 bytes of AdamW state per weight become ~2
    assert names["EMA on the CPU"].saving == 4 * n
    for saver in checked.savers:
        assert saver.saving > 0 and saver.peak == checked.estimate.peak - saver.saving
        assert estimate(estimate_config({**values, **saver.changes}), allow_measure=False).peak == saver.peak
    assert "What would make it fit" in checked.markdown()


def test_savers_of_a_run_whose_peak_is_its_activations():
    values = {"max_resolution": "512,512", "mixed_precision": "fp16", "train_lora": True, "network_dim": 16,
              "train_batch_size": 4, "cache_latents": False}
    checked = check_estimate(values, card=4)
    assert checked.estimate.phase in ("forward/backward", "VAE encoding")
    names = {s.name for s in checked.savers}
    assert {"gradient checkpointing", "batch 1 with gradient accumulation x4"} <= names
    assert not any("LoRA instead" in name or "Adafactor" in name for name in names)
    assert not [n for n, _ in candidates(estimate_config({**values, "gradient_checkpointing": True}))
                if n == "gradient checkpointing"]


def test_every_builtin_preset_is_estimated_from_the_shipped_table():
    from core.config.presets import list_presets

    presets = [p for p in list_presets("train")[0] if p.builtin]
    assert len(presets) >= 8
    for preset in presets:
        checked = check_estimate(preset.values, card=24)
        assert checked.estimate.peak > checked.estimate.weight_bytes, preset.name
        assert checked.verdict in ("fits", "tight", "does not fit")
        assert checked.estimate.activations_exact, f"{preset.name}: its step shape is not in the shipped table"


def test_cli_prints_the_estimate_and_its_savers(capsys):
    from core.jobs.cli import main

    assert main(["estimate", "--config", "presets/train/sd15-24gb.json", "--card", "8"]) == 0
    out = capsys.readouterr().out
    assert "Memory estimate:" in out and "does not fit" in out and "--set " in out
    assert main(["estimate", "--config", "presets/train/sd15-24gb.json", "--card", "80", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "fits" and data["estimate"]["arch"] == "sd1" and data["savers"] == []
    assert main(["estimate", "--set", "train_batch_size=0"]) == 2


def test_a_run_records_its_measured_peak_beside_its_estimate(demo_kit, tmp_path, monkeypatch):
    kit = demo_kit("sd1")
    monkeypatch.setenv(TRACE_CPU_ALLOCATOR, "1")  # also the CPU allocator's peak: what the estimate predicts
    values = train_values(kit, tmp_path / "out", max_train_epochs=1, train_batch_size=4)  # 8 images by bucket
    planned, counted = planned_steps(estimate_config(values))
    assert counted == f"about {planned} per epoch x 1 epochs"
    result = train(values, tmp_path / "run")
    assert result["steps"] == planned  # the steps of an epoch as the trainer counts them
    measured = result["measured"]
    assert measured["device"] == "cpu" and measured["peak_rss"] > measured["peak_rss_above_model"] > 0
    assert measured["peak_allocated_above_model"] > 0 and abs(measured["allocated_error_percent"]) <= 20
    assert measured["steps_per_s"] > 0 and measured["estimated"] > 0
    assert isinstance(measured["error_percent"], float)
    saved = json.loads((tmp_path / "run" / "estimate.json").read_text())
    assert saved["above_weights"] == measured["estimated"] and saved["arch"] == "sd1"
    again = check_estimate({**values, "max_train_epochs": 3})  # this machine: no GPU, so timed by CPU runs
    assert f"for {3 * planned} steps (about {planned} per epoch x 3 epochs)" in again.duration
    assert "from a past run on cpu" in again.duration


def test_a_cuda_run_reads_torch_s_peak_counters(monkeypatch):
    from core.estimate.measured import RunMeter

    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA GeForce RTX 3060")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 6 * 2**30)
    device = torch.device("cuda", 0)
    meter = RunMeter(device)
    assert calls == [("reset", device)] and meter.trace is None  # the peak counts from the start of training
    figures = meter.figures()
    assert figures == {"device": "NVIDIA GeForce RTX 3060", "peak_allocated": 5 * 2**30, "peak_reserved": 6 * 2**30}
    figures, warning = compare(figures, {"peak": 4 * 2**30}, 0.15)
    assert figures["error_percent"] == 25.0 and "peak GPU memory allocated: 5.00 GiB, +25% over" in warning


def test_compare_warns_past_the_margin_and_rates_are_remembered():
    gib = 2**30
    figures, warning = compare({"device": "X", "peak_allocated": 13 * gib}, {"peak": 10 * gib}, 0.15)
    assert figures["error_percent"] == 30.0 and "+30% over the estimate" in warning
    assert compare({"device": "X", "peak_allocated": 11 * gib}, {"peak": 10 * gib}, 0.15)[1] is None
    tiny, warning = compare({"device": "cpu", "peak_rss_above_model": 36 * 2**20}, {"above_weights": 15 * 2**20}, 0.15)
    assert tiny["error_percent"] == 140.0 and warning is None  # a few MiB: a CPU process's own noise
    traced = {"device": "cpu", "peak_rss_above_model": 3 * gib, "peak_allocated_above_model": gib}
    figures, warning = compare(traced, {"above_weights": gib}, 0.15)  # RSS also holds what is not a tensor
    assert (figures["error_percent"], figures["allocated_error_percent"], warning) == (200.0, 0.0, None)
    figures, warning = compare({**traced, "peak_allocated_above_model": 2 * gib}, {"above_weights": gib}, 0.15)
    assert "peak of torch's CPU allocator above the model: 2.00 GiB, +100% over" in warning
    remember_rate({"device": "GPU A", "model": "m", "pixels": 512 * 512, "batch": 1, "checkpointing": True,
                   "lora": False, "steps_per_s": 2.0})
    rate, past = expected_rate("GPU A", "m", 512 * 512, 2, True, False)
    assert rate == 1.0 and past["batch"] == 1
    assert expected_rate("GPU B", "m", 512 * 512, 2, True, False) is None
