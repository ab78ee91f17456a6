"""The estimate and the measured figures inside a training run: at the start the run's own estimate (written to
its folder as estimate.json and logged, with the duration expected from past runs), at the end the measured
peak memory and rate beside it (the run's result, `measured`), a warning when the peak passed the estimate
by more than its margin, and the rate remembered for the next run's duration."""
from __future__ import annotations

import json
import time

import torch

from core.config import TrainConfig
from core.estimate.activations import config_hash
from core.estimate.budget import MARGIN, latent_size
from core.estimate.measured import (
    ESTIMATE_FILE,
    RunMeter,
    compare,
    expected_rate,
    format_duration,
    remember_rate,
)
from core.fsutil import atomic_write_text


class RunWatch:
    def __init__(self, cfg: TrainConfig, ctx, accelerator, model, steps_left: int):
        self.cfg, self.ctx, self.main = cfg, ctx, accelerator.is_main_process
        self.device = accelerator.device.type
        self.model = config_hash(dict(model.unet.config))
        self.estimate = self._estimate()
        parts = [getattr(model, p) for p in ("unet", "vae", "text_encoder", "text_encoder_2", "network")]
        self.meter = RunMeter(accelerator.device, [p for p in parts if isinstance(p, torch.nn.Module)])
        self.log_duration(self.meter.device_name, steps_left)
        self.started = time.perf_counter()

    def _estimate(self) -> dict | None:
        from core.estimate.budget import estimate

        try:
            found = estimate(self.cfg, allow_measure=False, device=self.device)
        except Exception as exc:  # the estimate must never stop a run
            self.ctx.log(f"no memory estimate ({type(exc).__name__}: {exc})")
            return None
        data = {**found.to_json(), "above_weights": found.above_weights}
        if self.main:
            atomic_write_text(self.ctx.run.path / ESTIMATE_FILE, json.dumps(data, indent=1))
        self.ctx.log(f"memory estimate: peak {found.peak / 2**30:.2f} GiB allocated by torch "
                     f"({found.above_weights / 2**30:.2f} GiB above the weights) + "
                     f"{found.overhead / 2**30:.2f} GiB CUDA context, margin ±{MARGIN:.0%}")
        return data

    def log_duration(self, device_name: str, steps: int) -> None:
        """The run's expected duration from past runs on this device (nothing when there are none)."""
        height, width = latent_size(self.cfg)
        found = expected_rate(device_name, self.model, height * width * 64, self.cfg.train_batch_size,
                              self.cfg.gradient_checkpointing, self.cfg.train_lora)
        if found:
            rate, _ = found
            self.ctx.log(f"expected duration: about {format_duration(steps / rate)} ({rate:.2f} steps/s, from a "
                         "past run on this device)")

    def finish(self, steps_done: int) -> dict:
        """The measured figures (and the estimate with the error), for the run's result."""
        figures = self.meter.figures()
        elapsed = time.perf_counter() - self.started
        figures["steps_per_s"] = round(steps_done / elapsed, 4) if steps_done and elapsed > 0 else None
        figures, warning = compare(figures, self.estimate, MARGIN)
        if warning:
            self.ctx.warning(warning)
        peak = figures.get("peak_allocated", figures.get("peak_rss_above_model", 0))
        self.ctx.log(f"measured: peak {peak / 2**30:.2f} GiB"
                     + (f", {figures['error_percent']:+.1f}% vs the estimate" if figures.get("error_percent")
                        is not None else "")
                     + (f", {figures['steps_per_s']:.3f} steps/s" if figures.get("steps_per_s") else ""))
        if self.main and figures.get("steps_per_s"):
            height, width = latent_size(self.cfg)
            try:
                remember_rate({"device": figures["device"], "model": self.model, "pixels": height * width * 64,
                               "batch": self.cfg.train_batch_size, "checkpointing": self.cfg.gradient_checkpointing,
                               "lora": self.cfg.train_lora, "steps_per_s": figures["steps_per_s"]})
            except OSError as exc:
                self.ctx.log(f"rate not remembered ({exc})")
        return figures
