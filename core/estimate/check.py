"""The estimate as Check settings, Start and `python -m core estimate` show it: the settings' estimate, the GPU or
card it is compared with, the savers when it does not fit, and the expected duration."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.estimate.activations import config_hash, measure_in_background
from core.estimate.budget import Estimate, estimate, latent_size, unet_inputs, unet_shape
from core.estimate.cards import DEFAULT_CARD, THIS_GPU, card_bytes
from core.estimate.measured import expected_rate, format_duration
from core.estimate.savers import Saver, savers
from core.estimate.skeleton import estimate_config, model_shape
from core.estimate.verdict import present_gpus, report, verdict


@dataclass
class Checked:
    estimate: Estimate
    available: int
    against: str
    verdict: str
    savers: list[Saver] = field(default_factory=list)
    duration: str = ""

    def markdown(self) -> str:
        return report(self.estimate, self.available, self.against, self.savers, self.duration)

    def to_json(self) -> dict:
        return {"estimate": self.estimate.to_json(), "available": self.available, "against": self.against,
                "verdict": self.verdict, "duration": self.duration,
                "savers": [{"name": s.name, "changes": s.changes, "saving": s.saving, "peak": s.peak}
                           for s in self.savers]}


def compared_with(card: str | float | None) -> tuple[int, str, str | None]:
    """(bytes available, what they are, device name for the rate table: "" for the CPU, None for a card that is
    not this machine's) for a card choice: THIS_GPU (the first GPU's free memory; a DEFAULT_CARD card when there
    is none) or a size in GB."""
    if card in (None, "", THIS_GPU):
        gpus = present_gpus()
        if gpus:
            return gpus[0].free, f"free on {gpus[0].name}", gpus[0].name
        return card_bytes(DEFAULT_CARD), f"no CUDA GPU here: a card of {DEFAULT_CARD} GB", ""
    try:
        size = float(str(card).removesuffix("GB").strip())
    except ValueError:
        raise ValueError(f"card {card!r}: give a size in GB (e.g. 24) or gpu") from None
    return card_bytes(size), f"a card of {size:g} GB", None


def check_estimate(values: dict, card: str | float | None = None, arch: str | None = None,
                   allow_measure: bool = False, in_child: bool = True) -> Checked:
    """The estimate of the settings `values` against `card`; savers when it is not a clear fit. `allow_measure`:
    measure a step shape the table only has a scaled value for (else measured in the background, for the next
    check). `in_child`: measurements run in a child process (see activations.measured_or_scaled). ConfigError
    when the settings are invalid."""
    cfg = estimate_config(values)
    shape = model_shape(cfg, arch)
    found = estimate(cfg, allow_measure=allow_measure, shape=shape, in_child=in_child)
    if not found.activations_exact:
        measure_later(cfg, shape)
    available, against, device = compared_with(card)
    said = verdict(found.needed, available)
    helpers = savers(values, found, shape, in_child=in_child) if said != "fits" else []
    return Checked(found, available, against, said, helpers,
                   duration_line(cfg, config_hash(shape.configs["unet"]), device))


def measure_later(cfg, shape) -> None:
    """Measure the exact step shape in a child process, for the next check (the table is the user's)."""
    measure_in_background(unet_shape(cfg, shape), shape.configs["unet"], **unet_inputs(shape))


def duration_line(cfg, model: str, device: str | None) -> str:
    """The expected duration of the run's steps (for max_train_epochs, counted from the dataset) from past runs of
    this model's U-Net on this device ("": the CPU; None: a chosen card, not this machine), or what it will be
    known from."""
    from core.train.preflight import planned_steps

    planned = planned_steps(cfg)
    if planned is None:
        return "**Time:** known once the dataset can be counted (max_train_epochs) and the first steps are done."
    steps, counted = planned
    counted = f" ({counted})" if counted else ""
    if device is None:
        return f"**Time:** {steps} steps{counted}; timed by past runs on this machine's GPU only (none chosen here)."
    height, width = latent_size(cfg)
    found = expected_rate(device or "cpu", model, height * width * 64, cfg.train_batch_size,
                          cfg.gradient_checkpointing, cfg.train_lora)
    if not found:
        return (f"**Time:** {steps} steps{counted}; no past run on this device to time them by: the progress "
                "bar's ETA appears after the first steps.")
    rate, past = found
    return (f"**Time:** about {format_duration(steps / rate)} for {steps} steps{counted} ({rate:.2f} steps/s, from "
            f"a past run on {past['device']}: {past['steps_per_s']:.2f} steps/s at batch {past['batch']}).")

