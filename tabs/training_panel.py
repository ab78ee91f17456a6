"""The training run's live view: the job panel plus loss and learning-rate curves, the latest checkpoint
and the newest samples."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from core.dataset.images import ImageError, thumbnail
from tabs.charts import line_chart_svg
from tabs.job_panel import JobPanel

GALLERY_SIZE = 16


def smoothed(points: list[tuple[float, float]], weight: float = 0.9) -> list[tuple[float, float]]:
    """Exponential moving average of a noisy curve (TensorBoard's smoothing, debiased)."""
    out, average = [], 0.0
    for i, (step, value) in enumerate(points, start=1):
        average = weight * average + (1 - weight) * value
        out.append((step, average / (1 - weight ** i)))
    return out


def _counts(run: dict | None) -> tuple:
    if not run:
        return ()
    return (tuple(len(v) for v in run.get("metrics", {}).values()), len(run.get("images", [])),
            len(run.get("checkpoints", [])))


class TrainingPanel(JobPanel):
    """The job panel plus curves, the latest checkpoint and a gallery of samples."""

    def __init__(self):
        super().__init__("train")
        with gr.Row():
            self.loss_chart = gr.HTML(line_chart_svg({}, "Loss"), elem_id="train-loss-chart")
            self.lr_chart = gr.HTML(line_chart_svg({}, "Learning rate"), elem_id="train-lr-chart")
        self.checkpoint = gr.Markdown(elem_id="train-checkpoint")
        self.gallery = gr.Gallery(label="Samples (newest first)", columns=4, height=320, elem_id="train-samples")

    @property
    def outputs(self) -> list:
        return [*super().outputs, self.loss_chart, self.lr_chart, self.checkpoint, self.gallery]

    def poll(self, run: dict | None) -> dict:
        before = _counts(run)
        updates = super().poll(run)
        new = updates.get(self.run)
        if isinstance(new, dict) and (_counts(new) != before or not run.get("events_offset")):
            updates.update(self.views(new))
        return updates

    def views(self, run: dict) -> dict:
        metrics = run.get("metrics", {})
        loss = metrics.get("loss", [])
        curves = {"loss": loss, "smoothed": smoothed(loss), "validation loss": metrics.get("val_loss", [])}
        latest = run["checkpoints"][-1] if run.get("checkpoints") else None
        return {self.loss_chart: line_chart_svg(curves, "Loss"),
                self.lr_chart: line_chart_svg({"learning rate": metrics.get("lr", [])}, "Learning rate"),
                self.checkpoint: f"Latest checkpoint: `{latest[0]}` (step {latest[1]})" if latest else "",
                self.gallery: _gallery(run.get("images", []))}


def _gallery(paths: list[str]) -> list:
    items = []
    for path in reversed(paths[-GALLERY_SIZE:]):
        try:
            items.append((thumbnail(path, 384), Path(path).name))
        except (ImageError, OSError):
            continue  # removed meanwhile
    return items
