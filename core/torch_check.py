"""At start, say which PyTorch build runs and whether it can use the NVIDIA GPU that is present.

The launchers choose the build from the GPU and driver (core/launcher.py); this catches what they
cannot: a venv made elsewhere, a driver or GPU changed since, a build forced by TORCH_CUDA.
"""
from __future__ import annotations

import subprocess
import threading

from core import launcher

PREFIX = "[torch] "
ADVICE = ("Delete venv/.requirements-stamp and start the launcher again: it installs the PyTorch build that "
          "suits this GPU and driver, or says what to update (README: Which PyTorch build the launcher installs).")


def nvidia_gpus(smi: str = "nvidia-smi") -> list:
    """The GPUs nvidia-smi reports ([] without a working nvidia-smi or with an answer it cannot read)."""
    try:
        result = subprocess.run([smi] + launcher.SMI_QUERY, capture_output=True, text=True,
                                timeout=launcher.SMI_TIMEOUT_S)
        return launcher.parse_gpus(result.stdout) if result.returncode == 0 else []
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def runs_on(capability: tuple, arch_list: list) -> bool:
    """Whether a torch built for arch_list (['sm_75', 'compute_120', ...]) has code for this GPU:
    binaries of its own major version and a lower or equal minor, or PTX of a lower or equal version."""
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit() or len(digits) < 2:
            continue
        built = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if kind == "compute" and built <= capability:
            return True
    return False


def describe(torch, gpus: list) -> tuple[list, list]:
    """(info lines, warnings) about the torch module given and the NVIDIA GPUs nvidia-smi lists."""
    cuda = torch.version.cuda
    info = ["PyTorch {} ({})".format(torch.__version__, "CUDA " + cuda if cuda else "CPU-only build")]
    warnings = []
    listing = ", ".join("{} (sm_{}{}, driver {})".format(g.name, *g.capability, g.driver_text) for g in gpus)
    if not torch.cuda.is_available():
        info.append("no GPU in use: jobs run on the CPU")
        if gpus:
            why = ("this is a CPU-only build" if not cuda else
                   "this CUDA {} build cannot start on driver {}".format(
                       cuda, min(gpus, key=lambda g: g.driver).driver_text))
            warnings.append("an NVIDIA GPU is present ({}) but PyTorch cannot use it: {}; jobs will run on "
                            "the CPU, many times slower. {}".format(listing, why, ADVICE))
        return info, warnings
    arch_list = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count()):
        name, capability = torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))
        info.append("GPU {}: {} (sm_{}{})".format(index, name, *capability))
        if not runs_on(capability, arch_list):
            warnings.append("PyTorch {} (CUDA {}) has no code for {} (sm_{}{}; it holds {}): GPU jobs will fail "
                            "with 'no kernel image is available'. {}".format(
                                torch.__version__, cuda, name, capability[0], capability[1],
                                " ".join(arch_list), ADVICE))
    return info, warnings


def log_torch_build(smi: str = "nvidia-smi", out=print) -> None:
    """Import torch and print what describe() finds; any failure is reported, never raised."""
    try:
        import torch

        info, warnings = describe(torch, nvidia_gpus(smi))
    except Exception as exc:  # a broken install must not take the GUI down with it
        out(PREFIX + "could not check PyTorch: {}: {}".format(type(exc).__name__, exc), flush=True)
        return
    for line in info:
        out(PREFIX + line, flush=True)
    for line in warnings:
        out(PREFIX + "WARNING: " + line, flush=True)


def start_torch_check(smi: str = "nvidia-smi") -> threading.Thread:
    """Run log_torch_build in a background thread: importing torch takes seconds, the GUI serves meanwhile."""
    thread = threading.Thread(target=log_torch_build, args=(smi,), name="torch-check", daemon=True)
    thread.start()
    return thread
