"""core/torch_check.py: the GUI's start-up line about the PyTorch build and the GPU it can use."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from core import torch_check
from core.launcher import Gpu

GTX_1080 = Gpu("NVIDIA GeForce GTX 1080", (6, 1), (580, 95, 5), "580.95.05")
RTX_4090 = Gpu("NVIDIA GeForce RTX 4090", (8, 9), (575, 51, 3), "575.51.03")
CU130_ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def fake_torch(version="2.13.0+cu130", cuda="13.0", devices=(), arches=CU130_ARCHES):
    """A stand-in for the torch module with the attributes describe() reads."""
    return SimpleNamespace(__version__=version, version=SimpleNamespace(cuda=cuda), cuda=SimpleNamespace(
        is_available=lambda: bool(devices), device_count=lambda: len(devices), get_arch_list=lambda: list(arches),
        get_device_name=lambda i: devices[i][0], get_device_capability=lambda i: devices[i][1]))


def test_cpu_build_without_gpu_says_so_without_warning():
    info, warnings = torch_check.describe(fake_torch("2.13.0+cpu", None), [])
    assert info == ["PyTorch 2.13.0+cpu (CPU-only build)", "no GPU in use: jobs run on the CPU"]
    assert warnings == []


def test_cpu_build_with_an_nvidia_gpu_warns_in_plain_words():
    _, warnings = torch_check.describe(fake_torch("2.13.0+cpu", None), [RTX_4090])
    assert len(warnings) == 1
    assert "an NVIDIA GPU is present (NVIDIA GeForce RTX 4090 (sm_89, driver 575.51.03))" in warnings[0]
    assert "this is a CPU-only build" in warnings[0] and ".requirements-stamp" in warnings[0]


def test_cuda_build_that_cannot_start_on_the_driver_warns():
    _, warnings = torch_check.describe(fake_torch(), [RTX_4090])
    assert "this CUDA 13.0 build cannot start on driver 575.51.03" in warnings[0]


def test_gpu_in_use_is_named():
    info, warnings = torch_check.describe(fake_torch(devices=[("NVIDIA GeForce RTX 4090", (8, 9))]), [RTX_4090])
    assert info == ["PyTorch 2.13.0+cu130 (CUDA 13.0)", "GPU 0: NVIDIA GeForce RTX 4090 (sm_89)"]
    assert warnings == []


def test_cuda_13_build_on_a_pascal_gpu_warns_that_it_has_no_code_for_it():
    """torch.cuda.is_available() is True here, yet every kernel would fail."""
    info, warnings = torch_check.describe(fake_torch(devices=[("NVIDIA GeForce GTX 1080", (6, 1))]), [GTX_1080])
    assert "GPU 0: NVIDIA GeForce GTX 1080 (sm_61)" in info
    assert len(warnings) == 1 and "has no code for NVIDIA GeForce GTX 1080 (sm_61" in warnings[0]
    assert "no kernel image is available" in warnings[0]


@pytest.mark.parametrize("capability, arches, runs", [
    ((8, 9), ["sm_86"], True),          # Ada runs Ampere binaries
    ((6, 1), ["sm_60", "sm_70"], True),
    ((6, 1), ["sm_75", "sm_120"], False),
    ((9, 0), ["sm_86"], False),         # binaries do not run on a newer major version
    ((12, 1), ["sm_120"], True),
    ((13, 0), ["sm_120", "compute_120"], True),  # PTX is compiled for newer GPUs
    ((7, 5), ["compute_80"], False),
])
def test_runs_on(capability, arches, runs):
    assert torch_check.runs_on(capability, arches) is runs


def test_the_real_torch_and_a_fake_nvidia_smi(tmp_path):
    if os.name == "nt":
        pytest.skip("the fake nvidia-smi is a shell script")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA GeForce RTX 4090, 8.9, 580.95.05'\n")
    smi.chmod(0o755)
    lines = []
    torch_check.log_torch_build(str(smi), out=lambda line, flush: lines.append(line))
    assert lines[0] == f"[torch] PyTorch {torch.__version__} (" + (
        f"CUDA {torch.version.cuda})" if torch.version.cuda else "CPU-only build)")
    if not torch.cuda.is_available():
        assert any(line.startswith("[torch] WARNING: an NVIDIA GPU is present") for line in lines)


def test_no_nvidia_smi_means_no_gpus(tmp_path):
    assert torch_check.nvidia_gpus(str(tmp_path / "missing")) == []


def test_a_failing_check_is_reported_not_raised(monkeypatch):
    def broken_describe(torch, gpus):
        raise RuntimeError("CUDA driver initialization failed")
    monkeypatch.setattr(torch_check, "describe", broken_describe)
    lines = []
    torch_check.log_torch_build("no-such-smi", out=lambda line, flush: lines.append(line))
    assert lines == ["[torch] could not check PyTorch: RuntimeError: CUDA driver initialization failed"]


def test_the_check_runs_in_a_background_thread(monkeypatch):
    seen = []
    monkeypatch.setattr(torch_check, "log_torch_build", lambda smi: seen.append(smi))
    thread = torch_check.start_torch_check("no-such-smi")
    thread.join(timeout=30)
    assert seen == ["no-such-smi"] and thread.daemon
