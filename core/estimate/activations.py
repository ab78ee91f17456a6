"""The memory of one training step above the weights, measured, not guessed: the real U-Net (its diffusers
class, from the model's config) runs one forward and backward pass under PyTorch's fake tensors
(`FakeTensorMode`: shapes and dtypes, no data, no memory) while PyTorch's memory tracker
(`torch.distributed._tools.mem_tracker.MemTracker`) follows every tensor it makes, as parameter,
gradient, activation or temporary. The VAE's encoding (when latents are not cached) is measured the same way.

What a measurement keeps (bytes, for one shape: architecture, latent size, batch, gradient checkpointing,
weight and compute dtypes, what is trained):
- `peak_above_weights`: the step's peak minus the weights, i.e. the gradients made by then, the activations
  kept for the backward pass and the temporaries at that moment;
- `grads_at_peak` of those; `activations_peak`: the largest activations + temporaries seen at any moment.

Measurements are kept in a table: the one shipped with the studio (core/data/activation_table.json) and the
user's own (`<studio home>/cache/activation_table.json`, written atomically), which a shape not yet measured
is added to. Measuring takes 5-60 s on a CPU; an estimate that must not wait scales the nearest measured shape
of the same kind (activations grow with batch x pixels) and says so.

Where this differs from a CUDA run (the margin in core/estimate/budget.py covers it):
- kernels: on the CPU, attention (SDPA) picks its flash kernel for the CPU, whose saved tensors match CUDA's
  flash / memory-efficient kernels (the logsumexp, not the attention matrix); xformers is not measured.
  cuDNN convolution workspaces and cuBLAS workspaces are not seen;
- autocast: the CPU's autocast lists of fp16/bf16 ops differ a little from CUDA's;
- the allocator: this counts tensor bytes (what torch.cuda.max_memory_allocated reports); the caching
  allocator rounds blocks (512 B, 2 MiB segments) and fragments, so reserved memory is higher;
- the CUDA context itself (300-600 MB, outside torch's counts) is the budget's fixed overhead.
"""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from core.fsutil import studio_home

SHIPPED_TABLE = Path(__file__).resolve().parent.parent / "data" / "activation_table.json"
REPO = str(Path(__file__).resolve().parent.parent.parent)  # where `python -m core...` runs
TABLE_VERSION = 1
_MEASURING = threading.Lock()
LORA_RANK = 16  # the adapters' rank when a LoRA step is measured (its own activations are tiny at any rank)


def user_table_path() -> Path:
    return studio_home() / "cache" / "activation_table.json"


@dataclass(frozen=True)
class Shape:
    """One measured situation. `trained`: full (the whole U-Net), lora:<lora_targets>, or frozen (the U-Net
    frozen, gradients flowing through it to a trained text encoder); `part`: unet, or vae (its encoder,
    without gradients)."""
    model: str           # a short hash of the part's diffusers config
    part: str
    height: int          # latent size (pixels / 8)
    width: int
    batch: int
    checkpointing: bool
    weight_dtype: str    # the part's weights: float32 / float16 / bfloat16
    compute_dtype: str   # the autocast dtype (float32: no autocast)
    trained: str

    @property
    def key(self) -> str:
        return "|".join(str(v) for v in asdict(self).values())

    def kind(self) -> str:
        """The key without size and batch: shapes of one kind scale with batch x pixels."""
        return "|".join(str(v) for k, v in asdict(self).items() if k not in ("height", "width", "batch"))


@dataclass
class Measured:
    peak_above_weights: int
    grads_at_peak: int
    activations_peak: int
    exact: bool = True     # False: scaled from another shape of the same kind
    scaled_from: str = ""

    def to_json(self) -> dict:
        return {"peak_above_weights": self.peak_above_weights, "grads_at_peak": self.grads_at_peak,
                "activations_peak": self.activations_peak}


def config_hash(config: dict) -> str:
    """A short name of an architecture: its config's values that shape the model (not its name or version)."""
    shaping = {k: v for k, v in config.items() if not k.startswith("_") and k != "sample_size"}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- the table ---------------------------------------------------------------------------------------

def read_table(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("shapes", {}) if isinstance(data, dict) and data.get("version") == TABLE_VERSION else {}


def known_shapes() -> dict[str, dict]:
    """The shipped measurements, then the user's (theirs win: measured on their own torch)."""
    return {**read_table(SHIPPED_TABLE), **read_table(user_table_path())}


def write_table(path: Path, shapes: dict[str, dict]) -> None:
    from core.fsutil import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": TABLE_VERSION, "shapes": dict(sorted(shapes.items()))}, indent=1) + "\n"
    atomic_write_text(path, text)


def remember(shape: Shape, measured: Measured, path: Path | None = None) -> None:
    """Add a measurement to the user's table (or to `path`: the shipped one, when the studio's is rebuilt)."""
    path = path or user_table_path()
    write_table(path, {**read_table(path), shape.key: measured.to_json()})


def lookup(shape: Shape, shapes: dict[str, dict] | None = None) -> Measured | None:
    """The measurement of `shape`, or one scaled from the nearest measured shape of its kind; None when none
    of its kind was measured."""
    shapes = known_shapes() if shapes is None else shapes
    if shape.key in shapes:
        return Measured(**shapes[shape.key])
    kind, size = shape.kind(), shape.height * shape.width * shape.batch
    same = [(key, value) for key, value in shapes.items() if _kind_of_key(key) == kind]
    if not same:
        return None
    key, value = min(same, key=lambda item: abs(math.log(_size_of_key(item[0]) / size)))
    factor = size / _size_of_key(key)
    grads = value["grads_at_peak"]
    return Measured(peak_above_weights=grads + round((value["peak_above_weights"] - grads) * factor),
                    grads_at_peak=grads, activations_peak=round(value["activations_peak"] * factor),
                    exact=False, scaled_from=key)


def _kind_of_key(key: str) -> str:
    values = key.split("|")
    return "|".join(values[:2] + values[5:])


def _size_of_key(key: str) -> int:
    height, width, batch = (int(v) for v in key.split("|")[2:5])
    return height * width * batch


# --- measuring -----------------------------------------------------------------------------------------

def _tracker_class():
    """MemTracker keeping the overall peak only (its per-module peaks cost a pass over every module at every
    operation: 100 s instead of 10 s for SD 1.5's U-Net), and the largest activations + temporaries."""
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType

    class PeakTracker(MemTracker):
        activations_peak = 0

        def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True) -> tuple[int, int]:
            """As MemTracker's, with gradient hooks on trained parameters only (it hooks every parameter, and
            a frozen one refuses: a LoRA's base, a frozen U-Net)."""
            sizes = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            for param in module.parameters():
                if install_grad_hooks and param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                    def grad_hook(grad):
                        self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(grad_hook),
                        param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)))
            return sizes

        def _update_peak_stats(self, peak_state) -> None:
            for device, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(device, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[device] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[device] = dict(snap)
                working = snap[_MemRefType.ACT] + snap[_MemRefType.TEMP]
                self.activations_peak = max(self.activations_peak, working)

    return PeakTracker


def measure(shape: Shape, config: dict, context_dim: int = 0, text_embeds: int = 0) -> Measured:
    """Run `shape` under fake tensors with the memory tracker. `config`: the part's diffusers config;
    `context_dim`: the text encoders' output width (SDXL's U-Net also takes `text_embeds` pooled values).
    One at a time: the tracker's module hooks are global."""
    with _MEASURING:
        return _measure(shape, config, context_dim, text_embeds)


def _measure(shape: Shape, config: dict, context_dim: int, text_embeds: int) -> Measured:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import _MemRefType

    weight_dtype, compute_dtype = getattr(torch, shape.weight_dtype), getattr(torch, shape.compute_dtype)
    autocast = compute_dtype != torch.float32
    fake_mode = FakeTensorMode()
    module = _to_fake(_build(shape, config, weight_dtype), fake_mode)
    with fake_mode:
        tracker = _tracker_class()()
        tracker.track_external(module)
        with tracker, torch.autocast("cpu", dtype=compute_dtype, enabled=autocast):
            _step(shape, module, config, context_dim, text_embeds, compute_dtype)
        snap = next(iter(tracker._peak_mem_snap.values()))
    weights = snap[_MemRefType.PARAM] + snap[_MemRefType.BUFFER]
    total = max(tracker._peak_mem.values())
    return Measured(peak_above_weights=total - weights, grads_at_peak=snap[_MemRefType.GRAD],
                    activations_peak=tracker.activations_peak)


def _build(shape: Shape, config: dict, dtype):
    """The part made on the meta device in `dtype`, adapters added there as the trainer adds them (its weights
    become fake CPU tensors after: fake tensors cannot be converted with .to, meta ones can)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with init_empty_weights():
        module = (AutoencoderKL if shape.part == "vae" else UNet2DConditionModel).from_config(config).to(dtype)
    if shape.part == "vae":
        module.requires_grad_(False).eval()
    else:
        if shape.checkpointing:
            module.enable_gradient_checkpointing()
        module.train()
        if shape.trained.startswith("lora:"):
            from core.models.lora import add_lora

            with torch.device("meta"):
                add_lora({"unet": module}, LORA_RANK, LORA_RANK, 0.0, shape.trained.removeprefix("lora:"))
            for param in module.parameters():
                if param.requires_grad:
                    param.data = param.data.float()  # the trainer's adapters stay fp32 (unless full_fp16/bf16)
        elif shape.trained == "frozen":
            module.requires_grad_(False)
    return module


def _to_fake(module, fake_mode):
    import torch

    converter, cpu = fake_mode.fake_tensor_converter, torch.device("cpu")
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None:
                fake = converter.from_meta_and_device(fake_mode, param.data, cpu)
                sub._parameters[name] = torch.nn.Parameter(fake, requires_grad=param.requires_grad)
        for name, buffer in sub._buffers.items():
            if buffer is not None:
                sub._buffers[name] = converter.from_meta_and_device(fake_mode, buffer, cpu)
    return module


def _step(shape: Shape, module, config: dict, context_dim: int, text_embeds: int, compute_dtype) -> None:
    import torch

    batch = shape.batch
    if shape.part == "vae":
        pixels = torch.randn(batch, config.get("in_channels", 3), shape.height * 8, shape.width * 8,
                             dtype=next(module.parameters()).dtype)
        with torch.no_grad():
            module.encode(pixels).latent_dist.sample()
        return
    dtype = next(module.parameters()).dtype
    latents = torch.randn(batch, config.get("in_channels", 4), shape.height, shape.width, dtype=dtype)
    context = torch.randn(batch, 77, context_dim or _context_width(config), dtype=dtype,
                          requires_grad=shape.trained == "frozen")
    extra = {}
    if config.get("addition_embed_type") == "text_time":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, text_embeds or 1280, dtype=dtype),
                                      "time_ids": torch.randn(batch, 6, dtype=dtype)}
    timesteps = torch.randint(0, 1000, (batch,))
    prediction = module(latents, timesteps, context, **extra).sample
    loss = torch.nn.functional.mse_loss(prediction.float(), torch.randn(prediction.shape))
    loss.backward()


def _context_width(config: dict) -> int:
    width = config.get("cross_attention_dim", 768)
    return width[0] if isinstance(width, (list, tuple)) else int(width)


def measured_or_scaled(shape: Shape, config: dict, allow_measure: bool, in_child: bool = False,
                       **kwargs) -> Measured:
    """The table's value of `shape` (exact or scaled from its kind); measured now (and remembered) when it is
    not there, or when `allow_measure` and only a scaled value is. `in_child`: measure in a child process (the
    GUI: the tracker's global module hooks must not see the GUI's own models)."""
    found = lookup(shape)
    if found is not None and (found.exact or not allow_measure):
        return found
    if in_child:
        result = subprocess.run(child_command(shape, config, **kwargs), capture_output=True, text=True, cwd=REPO)
        if result.returncode:
            raise ValueError(f"measuring the step failed: {(result.stderr.strip().splitlines() or [''])[-1]}")
        return lookup(shape)
    measured = measure(shape, config, **kwargs)
    try:
        remember(shape, measured)
    except OSError:  # a read-only studio home: the value is still used now
        pass
    return measured


def child_command(shape: Shape, config: dict, **kwargs) -> list[str]:
    """`python -m core.estimate.activations JSON`: measure one shape in its own process and remember it."""
    job = {"shape": asdict(shape), "config": config, "kwargs": kwargs}
    return [sys.executable, "-m", "core.estimate.activations", json.dumps(job)]


def measure_in_background(shape: Shape, config: dict, **kwargs) -> None:
    """Measure and remember `shape` in a child process that the caller does not wait for."""
    subprocess.Popen(child_command(shape, config, **kwargs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     cwd=REPO)


def _child(job: str) -> None:
    import torch

    torch.set_num_threads(1)  # fake tensors compute nothing: one thread spares the machine
    data = json.loads(job)
    shape = Shape(**data["shape"])
    remember(shape, measure(shape, data["config"], **data["kwargs"]))


if __name__ == "__main__":
    _child(sys.argv[1])
