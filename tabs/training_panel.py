"""The training run's live view: the job panel plus loss and learning-rate curves (with a smoothing control),
the latest checkpoint and the newest samples."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from core.dataset.images import ImageError, thumbnail
from tabs.charts import SMOOTHING, line_frame, line_plot, line_summary, loss_series, lr_series
from tabs.job_panel import JobPanel

GALLERY_SIZE = 16


def counts(run: dict | None) -> tuple:
    """What a redraw depends on: how many metric points, samples and checkpoints the run has shown so far."""
    if not run:
        return ()
    return (tuple(len(v) for v in run.get("metrics", {}).values()), len(run.get("images", [])),
            len(run.get("checkpoints", [])))


def smoothing_slider(elem_id: str, info: bool = True) -> gr.Slider:
    return gr.Slider(0, 0.99, value=SMOOTHING, step=0.01, label="Loss smoothing", elem_id=elem_id,
                     info="0: raw values; closer to 1: smoother (as TensorBoard)" if info else None)


def curves(run: dict | None, weight: float) -> tuple:
    """The loss chart's frame and summary, the learning-rate chart's frame and summary."""
    metrics = (run or {}).get("metrics", {})
    loss, lr = loss_series(metrics, weight), lr_series(metrics)
    return line_frame(loss), line_summary(loss), line_frame(lr), line_summary(lr)


def gallery(paths: list[str], size: int, thumb: int = 384) -> list:
    """The newest `size` sample images, newest first, with their file names."""
    items = []
    for path in reversed(paths[-size:]):
        try:
            items.append((thumbnail(path, thumb), Path(path).name))
        except (ImageError, OSError):
            continue  # removed meanwhile
    return items


class TrainingPanel(JobPanel):
    """The job panel plus curves, the latest checkpoint and a gallery of samples."""

    def __init__(self):
        super().__init__("train")
        with gr.Row():
            with gr.Column():
                self.loss_chart = line_plot("Loss", "train-loss-chart")
                self.loss_summary = gr.HTML(line_summary({}), elem_id="train-loss-summary")
                self.smoothing = smoothing_slider("train-smoothing")
            with gr.Column():
                self.lr_chart = line_plot("Learning rate", "train-lr-chart", y_format=".1e")
                self.lr_summary = gr.HTML(line_summary({}), elem_id="train-lr-summary")
        self.checkpoint = gr.Markdown(elem_id="train-checkpoint")
        self.gallery = gr.Gallery(label="Samples (newest first)", columns=4, height=320, elem_id="train-samples")

    @property
    def outputs(self) -> list:
        return [*super().outputs, *self.charts, self.checkpoint, self.gallery]

    @property
    def charts(self) -> list:
        return [self.loss_chart, self.loss_summary, self.lr_chart, self.lr_summary]

    def poll(self, run: dict | None, weight: float = SMOOTHING) -> dict:
        before = counts(run)
        updates = super().poll(run)
        new = updates.get(self.run)
        if isinstance(new, dict) and (counts(new) != before or not run.get("events_offset")):
            updates.update(self.views(new, weight))
        return updates

    def views(self, run: dict, weight: float) -> dict:
        latest = run["checkpoints"][-1] if run.get("checkpoints") else None
        return {**dict(zip(self.charts, curves(run, weight))),
                self.checkpoint: f"Latest checkpoint: `{latest[0]}` (step {latest[1]})" if latest else "",
                self.gallery: gallery(run.get("images", []), GALLERY_SIZE)}

    @property
    def poll_inputs(self) -> list:
        return [self.run, self.smoothing]

    def wire(self, blocks: gr.Blocks) -> None:
        super().wire(blocks)
        self.smoothing.release(lambda run, weight: curves(run, weight), inputs=[self.run, self.smoothing],
                               outputs=self.charts, show_progress="hidden")
