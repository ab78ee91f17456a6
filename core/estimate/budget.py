"""The peak GPU memory of a training run, before it starts, with its breakdown.

Each part follows what the trainer does (core/train/loop.py `place_modules`, `eval_prompt_encoder`):
- weights of every part on the GPU, in their dtypes: trained ones in fp32 (fully in fp16/bf16 with
  full_fp16/full_bf16), frozen ones in the mixed-precision dtype; LoRA / LyCORIS adapters in fp32 over a base
  in that dtype; the VAE in fp32 with no_half_vae (and SDXL's own VAE); the text encoders leave the GPU with
  cache_text_encoder_outputs;
- gradients of the trained weights (their dtype), all of them at once except with fused_backward_pass;
- optimizer state per optimizer (core/estimate/optimizer_state.py) and its step's temporaries;
- EMA: an fp32 copy of the trained weights, on the GPU unless ema_on_cpu;
- the U-Net step above the weights, measured (core/estimate/activations.py) for the largest bucket
  (max_resolution), the batch, gradient checkpointing, the dtypes and what is trained; the VAE's encoding when
  latents are not cached, measured the same way; the trained text encoders' activations (small: 77 tokens);
- the CUDA context and kernels: a fixed overhead outside torch's counts.

The peak is the larger of the forward/backward phase and the optimizer step. MARGIN covers what the
measurement does not see (see core/estimate/activations.py): allocator rounding and fragmentation, cuDNN /
cuBLAS workspaces, autocast differences.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.config import TrainConfig
from core.estimate.activations import Measured, Shape, config_hash, measured_or_scaled
from core.estimate.optimizer_state import state_bytes, step_temporaries
from core.estimate.skeleton import ARCH_NAMES, ModelShape, counted, model_shape

MARGIN = 0.15               # the estimate's uncertainty: a peak above estimate x (1 + MARGIN) is a miss
CUDA_OVERHEAD = 600 * 2**20  # CUDA context, kernels, cuBLAS/cuDNN handles: outside torch's allocated memory
TEXT_TOKENS = {75: 77, 150: 154, 225: 231}
TEXT_ACTIVATION_FACTOR = 24  # tensors kept per token and width in a CLIP layer for its backward (x dtype bytes)


@dataclass
class Part:
    label: str
    bytes: int
    note: str = ""


@dataclass
class Estimate:
    arch: str
    source: str
    assumed: bool
    weights: list[Part] = field(default_factory=list)   # by module, in their dtypes
    training: list[Part] = field(default_factory=list)  # gradients, optimizer, EMA, activations
    phase: str = ""                                     # which phase makes the peak
    peak: int = 0                                       # bytes torch allocates at the peak (no overhead)
    overhead: int = CUDA_OVERHEAD
    activations_exact: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def weight_bytes(self) -> int:
        return sum(p.bytes for p in self.weights)

    @property
    def above_weights(self) -> int:
        """The peak minus the weights: what a run adds to the loaded model (compared with RSS on a CPU)."""
        return self.peak - self.weight_bytes

    @property
    def needed(self) -> int:
        """Memory the GPU must have free: the peak and the CUDA context."""
        return self.peak + self.overhead

    def to_json(self) -> dict:
        return {"arch": self.arch, "source": self.source, "assumed": self.assumed, "peak": self.peak,
                "needed": self.needed, "overhead": self.overhead, "phase": self.phase, "margin": MARGIN,
                "weights": [vars(p) for p in self.weights], "training": [vars(p) for p in self.training],
                "activations_exact": self.activations_exact, "notes": self.notes}


def dtype_bytes(name: str) -> int:
    return 4 if name == "float32" else 2


def compute_dtype(cfg: TrainConfig) -> str:
    return {"fp16": "float16", "bf16": "bfloat16"}.get(cfg.mixed_precision, "float32")


def latent_size(cfg: TrainConfig) -> tuple[int, int]:
    """(height, width) of the largest bucket's latents: max_resolution is width,height."""
    width, height = (int(v) for v in cfg.max_resolution.split(","))
    return height // 8, width // 8


def estimate(cfg: TrainConfig, arch: str | None = None, allow_measure: bool = True,
             shape: ModelShape | None = None, in_child: bool = False, device: str = "cuda") -> Estimate:
    """The run's peak GPU memory. `arch`: the family assumed when no model is chosen; `allow_measure`: measure
    a step shape that the table only has a scaled value for (seconds to a minute); `in_child`: measure in a
    child process; `device`: cuda, or cpu for a run on the CPU (torch's optimizers step tensor by tensor there,
    not with foreach over the whole group)."""
    shape = shape or model_shape(cfg, arch)
    count = counted(shape, cfg)
    trained = count.trained
    result = Estimate(shape.arch, shape.source, shape.assumed, overhead=CUDA_OVERHEAD if device == "cuda" else 0)
    dtype, full = compute_dtype(cfg), cfg.full_fp16 or cfg.full_bf16
    lora = cfg.train_lora

    def width_of(part: str, is_trained: bool) -> int:
        if is_trained:
            return dtype_bytes(dtype) if full else 4
        return dtype_bytes(dtype) if (lora or full or part not in trained) else 4

    on_gpu = ["unet", "vae"] + ([] if cfg.cache_text_encoder_outputs else text_parts(shape.arch))
    for part in ("unet", *text_parts(shape.arch), "vae"):
        tensors = count.parts[part]
        if part == "vae":
            vae_dtype = "float32" if cfg.no_half_vae or (shape.arch == "sdxl" and not cfg.vae.strip()) else dtype
            size = sum(n for n, _ in tensors) * dtype_bytes(vae_dtype)
            note = f"{_dtype_name(dtype_bytes(vae_dtype))}, frozen"
        else:
            size = sum(n * width_of(part, t) for n, t in tensors if not (t and lora))
            widths = sorted({width_of(part, t) for _, t in tensors if not (t and lora)})
            state = "frozen base" if lora else "trained" if part in trained else "frozen"
            note = f"{'/'.join(_dtype_name(w) for w in widths)}, {state}"
        if part in on_gpu:
            result.weights.append(Part(PART_LABELS[part], size, note))
        else:
            result.notes.append(f"{PART_LABELS[part]} ({_gib(size)}) moves to the CPU once captions are encoded")
    trained_shapes = [(s, width_of(part, True)) for part, shapes in trained.items() for s in shapes]
    if lora and trained:
        adapters = sum(_numel(s) for s, _ in trained_shapes)
        kind = f"LyCORIS {cfg.algo}" if cfg.network_module == "lycoris.kohya" else "LoRA"
        result.weights.append(Part(f"{kind} network", adapters * width_of("unet", True),
                                   f"{adapters:,} parameters, rank {cfg.network_dim}"))

    grads = sum(_numel(s) * w for s, w in trained_shapes)
    width = trained_shapes[0][1] if trained_shapes else 4
    shapes_only = [s for s, _ in trained_shapes]
    from core.train.optimizers import parse_optimizer_args

    args = parse_optimizer_args(cfg.optimizer_args)
    optimizer = state_bytes(cfg.optimizer_type, shapes_only, width, args)
    step_temp = step_temporaries(cfg.optimizer_type, shapes_only, width, cfg.fused_backward_pass or device != "cuda",
                                 cpu=device == "cpu")
    ema = sum(_numel(s) * 4 for s in shapes_only) if cfg.use_ema else 0
    ema_gpu = ema if cfg.use_ema and not cfg.ema_on_cpu else 0
    unet_step = unet_activations(cfg, shape, allow_measure, in_child)
    result.activations_exact = unet_step.exact
    if not unet_step.exact:
        result.notes.append("U-Net step scaled from a measured shape of the same kind (batch x pixels); "
                            "`python -m core estimate --measure` measures this one")
    te_act = text_activations(cfg, shape, trained)
    vae_act = 0 if cfg.cache_latents else vae_activations(cfg, shape, allow_measure, in_child).peak_above_weights

    held = result.weight_bytes + optimizer + ema_gpu
    largest_grad = max((_numel(s) * w for s, w in trained_shapes), default=0)
    unet_grads = sum(_numel(s) * width_of("unet", True) for s in trained.get("unet", []))
    other_grads = grads - unet_grads
    accumulating = cfg.gradient_accumulation_steps > 1
    if cfg.fused_backward_pass:  # each gradient is freed as soon as its weight is updated
        backward = unet_step.activations_peak + 2 * largest_grad + step_temp
        step = 0
        grads_shown = largest_grad
    else:
        measured_grads = unet_step.grads_at_peak
        backward = (unet_step.peak_above_weights - measured_grads
                    + (unet_grads if accumulating else measured_grads) + other_grads)
        step = grads + step_temp
        grads_shown = grads
    backward += te_act
    phases = {"forward/backward": backward, "optimizer step": step,
              "VAE encoding": vae_act + (grads if accumulating else 0)}
    result.phase, top = max(phases.items(), key=lambda item: item[1])
    result.notes.append("the parts are not all held at once: the peak is the larger of the forward/backward pass "
                        "(weights, optimizer state, EMA, the gradients made so far, activations) and the optimizer "
                        "step (weights, state, EMA, all gradients, the step's temporaries)")
    result.peak = held + top

    result.training = [
        Part("gradients", grads_shown, "one weight at a time (fused backward pass)" if cfg.fused_backward_pass
             else f"{_dtype_name(width)}, of {sum(_numel(s) for s in shapes_only):,} trained parameters"),
        Part(f"optimizer state ({cfg.optimizer_type})", optimizer),
        Part("optimizer step temporaries", step_temp, "foreach copy of the whole group" if step_temp and
             cfg.optimizer_type == "AdamW" else ""),
        Part("EMA", ema_gpu, "fp32 copy of the trained weights" if ema_gpu else
             (f"on the CPU ({_gib(ema)})" if cfg.use_ema else "off")),
        Part("U-Net activations", unet_step.activations_peak if cfg.fused_backward_pass
             else unet_step.peak_above_weights - unet_step.grads_at_peak, _activation_note(cfg, unet_step)),
        Part("text encoder activations", te_act, "trained text encoder(s)" if te_act else ""),
        Part("VAE encoding", vae_act, "latents not cached: each batch is encoded" if vae_act else "latents cached"),
    ]
    return result


def _numel(shape: tuple) -> int:
    count = 1
    for n in shape:
        count *= n
    return count


PART_LABELS = {"unet": "U-Net", "vae": "VAE", "text_encoder": "text encoder", "text_encoder_2": "text encoder 2"}


def text_parts(arch: str) -> list[str]:
    return ["text_encoder", "text_encoder_2"] if arch == "sdxl" else ["text_encoder"]


def _dtype_name(width: int) -> str:
    return "fp32" if width == 4 else "16-bit"


def _gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB"


def _activation_note(cfg: TrainConfig, measured: Measured) -> str:
    height, width = latent_size(cfg)
    how = "measured, incl. autocast's 16-bit weight copies and temporaries" if measured.exact \
        else "scaled from a measured shape"
    return (f"{how}: {width * 8}x{height * 8} px, batch {cfg.train_batch_size}, checkpointing "
            f"{'on' if cfg.gradient_checkpointing else 'off'}")


def unet_shape(cfg: TrainConfig, shape: ModelShape) -> Shape:
    dtype, full = compute_dtype(cfg), cfg.full_fp16 or cfg.full_bf16
    if not cfg.train_unet:
        trained = "frozen"
    elif cfg.train_lora:
        trained = "lora:" + (cfg.lora_targets if cfg.network_module == "networks.lora" else "all_linear_conv")
    else:
        trained = "full"
    weights = "float32" if trained == "full" and not full or dtype == "float32" else "float16"
    height, width = latent_size(cfg)
    return Shape(config_hash(shape.configs["unet"]), "unet", height, width, cfg.train_batch_size,
                 cfg.gradient_checkpointing, weights, "float16" if dtype != "float32" else "float32", trained)


def unet_inputs(shape: ModelShape) -> dict:
    """The U-Net's text inputs: the text encoders' width (and SDXL's pooled embedding width)."""
    configs = shape.configs
    return {"context_dim": sum(configs[p].get("hidden_size", 768) for p in text_parts(shape.arch)),
            "text_embeds": configs.get("text_encoder_2", {}).get("projection_dim", 1280)}


def unet_activations(cfg: TrainConfig, shape: ModelShape, allow_measure: bool, in_child: bool = False) -> Measured:
    return measured_or_scaled(unet_shape(cfg, shape), shape.configs["unet"], allow_measure, in_child,
                              **unet_inputs(shape))


def vae_shape(cfg: TrainConfig, shape: ModelShape) -> Shape:
    half = not (cfg.no_half_vae or (shape.arch == "sdxl" and not cfg.vae.strip())) and cfg.mixed_precision != "no"
    height, width = latent_size(cfg)
    dtype = "float16" if half else "float32"
    return Shape(config_hash(shape.configs["vae"]), "vae", height, width, cfg.train_batch_size, False, dtype, dtype,
                 "none")


def vae_activations(cfg: TrainConfig, shape: ModelShape, allow_measure: bool, in_child: bool = False) -> Measured:
    return measured_or_scaled(vae_shape(cfg, shape), shape.configs["vae"], allow_measure, in_child)


def text_activations(cfg: TrainConfig, shape: ModelShape, trained: dict) -> int:
    """The trained text encoders' activations kept for the backward pass (a formula: 77 tokens make them small
    next to the U-Net's)."""
    tokens = TEXT_TOKENS.get(cfg.max_token_length, 77)
    width = dtype_bytes(compute_dtype(cfg))
    total = 0
    for part in text_parts(shape.arch):
        if part in trained:
            config = shape.configs[part]
            layers = 1 if cfg.gradient_checkpointing else config.get("num_hidden_layers", 12)
            total += (cfg.train_batch_size * tokens * config.get("hidden_size", 768) * layers
                      * TEXT_ACTIVATION_FACTOR * width)
    return total


def describe_arch(arch: str) -> str:
    return ARCH_NAMES.get(arch, arch)
