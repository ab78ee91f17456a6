"""What a run really used, for its result and the Runs tab, beside the estimate made before it started: on CUDA
the peak memory torch allocated and reserved (torch.cuda.max_memory_allocated / max_memory_reserved), on a CPU
the process's peak resident memory; and steps per second. The rate of each finished run goes into a small rate
table in the user's folder (`<studio home>/cache/rate_table.json`), from which the next run's duration is
estimated at Start (same device and architecture, scaled by batch x pixels)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from core.fsutil import atomic_write_text, studio_home

ESTIMATE_FILE = "estimate.json"   # in the run folder: the estimate made at the start
RATE_TABLE_VERSION = 1
# Below this, a miss is a process's own noise (CPU kernel workspaces, allocator arenas: a tiny demo U-Net's bare
# forward and backward pass grows a CPU process by ~20 MiB per batch of 4), not a wrong estimate: no warning.
NOISE_FLOOR = 64 * 2**20


def peak_rss() -> int:
    """High-water resident memory of this process, in bytes (VmHWM on Linux: ru_maxrss survives exec)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        return psutil.Process().memory_info().peak_wset
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def touch_pages(modules, page: int = 4096) -> None:
    """Read one value of every memory page of the modules' weights and buffers (makes mapped files resident)."""
    import torch

    with torch.no_grad():
        for module in modules:
            for tensor in module.state_dict().values():
                if tensor.numel() and tensor.device.type == "cpu" and tensor.is_contiguous():
                    tensor.reshape(-1)[::max(1, page // tensor.element_size())].float().sum()


def reset_peak_rss() -> bool:
    """Make the high-water mark `peak_rss` reads this process's resident memory now (Linux: writing 5 to
    /proc/self/clear_refs), so a later peak_rss is the peak from here on; False where that cannot be done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


TRACE_CPU_ALLOCATOR = "STUDIO_TRACE_CPU_ALLOCATOR"  # "1": a CPU run also reports its allocator's peak


class CpuAllocatorTrace:
    """The peak of torch's CPU allocator from the trace's start: every tensor allocated and freed, the kernels'
    own buffers included, through the profiler's memory events. It is the CPU's counterpart of CUDA's
    max_memory_allocated (what the estimate predicts), where RSS also holds what is not a tensor (oneDNN and
    OpenMP buffers, the autograd graph, the C allocator's arenas). The profiler slows a run: only on request
    (STUDIO_TRACE_CPU_ALLOCATOR=1 in the environment; the estimate's bench sets it)."""

    def __init__(self):
        from torch.profiler import ProfilerActivity, profile

        self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.profiler.__enter__()

    def peak(self) -> int:
        """Stops the trace: the highest sum of the bytes allocated minus freed since its start."""
        self.profiler.__exit__(None, None, None)
        events = sorted((e for e in self.profiler.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns())
        total = peak = 0
        for event in events:
            total += event.nbytes()
            peak = max(peak, total)
        return peak


class RunMeter:
    """Started once the model is loaded and placed: on a CPU, the process's RSS then, with every weight of
    `modules` resident, is the baseline (weights loaded from safetensors are memory-mapped: a page counts in RSS
    only once read, so untouched weights would show up as growth during the first steps)."""

    def __init__(self, device, modules=()):
        import torch

        self.device = device
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        else:
            touch_pages(modules)
        self.device_name = torch.cuda.get_device_name(device) if self.cuda else "cpu"
        self.baseline_rss = current_rss()
        self.peak_from_here = not self.cuda and reset_peak_rss()  # else the loading's own peak may count
        self.trace = CpuAllocatorTrace() if not self.cuda and os.environ.get(TRACE_CPU_ALLOCATOR) == "1" else None

    def figures(self) -> dict:
        import torch

        if self.cuda:
            return {"device": self.device_name, "peak_allocated": torch.cuda.max_memory_allocated(self.device),
                    "peak_reserved": torch.cuda.max_memory_reserved(self.device)}
        peak = peak_rss()
        figures = {"device": "cpu", "peak_rss": peak, "peak_rss_above_model": peak - self.baseline_rss,
                   "peak_since_start": self.peak_from_here}
        if self.trace:
            figures["peak_allocated_above_model"] = self.trace.peak()
        return figures


def compare(figures: dict, estimate: dict | None, margin: float) -> tuple[dict, str | None]:
    """The figures with the estimate and the error in percent added, and a warning when the measured peak passes
    the estimate by more than the margin and by more than NOISE_FLOOR. CUDA: the allocated peak vs the estimated
    peak. CPU: the RSS growth above the loaded model vs the estimate's part above the weights (`error_percent`);
    with the allocator traced, its peak too (`allocated_error_percent`), which then decides the warning (RSS also
    holds what is not a tensor)."""
    if not estimate:
        return figures, None

    def error(measured: int, expected: int) -> float | None:
        return round(100 * (measured - expected) / expected, 1) if expected else None

    if "peak_allocated" in figures:
        measured, expected, what = figures["peak_allocated"], estimate["peak"], "peak GPU memory allocated"
        out = {**figures, "estimated": expected, "error_percent": error(measured, expected)}
    else:
        measured, expected = figures["peak_rss_above_model"], estimate["above_weights"]
        what = "peak memory above the loaded model"
        out = {**figures, "estimated": expected, "error_percent": error(measured, expected)}
        if "peak_allocated_above_model" in figures:
            measured, what = figures["peak_allocated_above_model"], "peak of torch's CPU allocator above the model"
            out["allocated_error_percent"] = error(measured, expected)
    warning = None
    if expected and measured > expected * (1 + margin) and measured - expected > NOISE_FLOOR:
        warning = (f"{what}: {measured / 2**30:.2f} GiB, {error(measured, expected):+.0f}% over the estimate made "
                   f"at the start ({expected / 2**30:.2f} GiB, margin ±{margin:.0%}); please report these settings")
    return out, warning


# --- the rate table ------------------------------------------------------------------------------------------

def rate_table_path() -> Path:
    return studio_home() / "cache" / "rate_table.json"


def read_rates(path: Path | None = None) -> list[dict]:
    try:
        data = json.loads((path or rate_table_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return data.get("runs", []) if isinstance(data, dict) and data.get("version") == RATE_TABLE_VERSION else []


def remember_rate(entry: dict, path: Path | None = None, keep: int = 200) -> None:
    """Add one finished run's rate ({device, model, pixels, batch, checkpointing, lora, steps_per_s})."""
    path = path or rate_table_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = (read_rates(path) + [entry])[-keep:]
    atomic_write_text(path, json.dumps({"version": RATE_TABLE_VERSION, "runs": runs}, indent=1) + "\n")


def expected_rate(device: str, model: str, pixels: int, batch: int, checkpointing: bool, lora: bool,
                  runs: list[dict] | None = None) -> tuple[float, dict] | None:
    """(steps/s, the past run it comes from) for a run like this on `device`: past runs of the same device and
    U-Net architecture (`model`: its config's hash), the nearest in batch x pixels (the rate scales inversely
    with it), the same checkpointing and LoRA choice preferred."""
    runs = [r for r in (read_rates() if runs is None else runs)
            if r.get("device") == device and r.get("model") == model and r.get("steps_per_s")]
    if not runs:
        return None
    work = pixels * batch

    def distance(run: dict) -> float:
        return (abs(math.log(run["pixels"] * run["batch"] / work)) + (run["checkpointing"] != checkpointing)
                + (run["lora"] != lora))

    best = min(runs, key=distance)
    return best["steps_per_s"] * best["pixels"] * best["batch"] / work, best


def format_duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"
