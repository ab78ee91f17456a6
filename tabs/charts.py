"""The data behind the GUI's charts: DataFrames for gr.LinePlot / gr.BarPlot, and the one-line summary shown
beside each chart (its numbers in data- attributes, for a reader that cannot see the plot)."""
from __future__ import annotations

import html
import math

import gradio as gr
import pandas as pd

MAX_POINTS = 500  # per line: more does not show on a chart a few hundred pixels wide
SMOOTHING = 0.9  # the loss curve's default smoothing weight


def smoothed(points: list[tuple[float, float]], weight: float = SMOOTHING) -> list[tuple[float, float]]:
    """Exponential moving average of a noisy curve (TensorBoard's smoothing, debiased); weight 0 keeps it as is."""
    out, average = [], 0.0
    for i, (step, value) in enumerate(points, start=1):
        average = weight * average + (1 - weight) * value
        out.append((step, average / (1 - weight ** i)))
    return out


def thinned(points: list[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most `limit` points, evenly spread, the last one always kept."""
    if len(points) <= limit:
        return list(points)
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit - 1)] + [points[-1]]


def finite(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points with a real number as value (a diverged run logs nan or inf)."""
    return [(x, float(y)) for x, y in points if isinstance(y, (int, float)) and math.isfinite(y)]


def line_frame(series: dict[str, list[tuple[float, float]]], limit: int = MAX_POINTS) -> pd.DataFrame:
    """Long-format rows (step, value, series) of every named series, each thinned to `limit` points."""
    rows = [(x, y, name) for name, points in series.items() for x, y in thinned(finite(points), limit)]
    frame = pd.DataFrame(rows, columns=["step", "value", "series"])
    return frame.astype({"step": float, "value": float, "series": str})


def loss_series(metrics: dict, weight: float = SMOOTHING) -> dict[str, list[tuple[float, float]]]:
    """The loss chart's lines: raw loss, its smoothed curve and the validation loss."""
    loss = finite(metrics.get("loss", []))
    return {"loss": loss, "smoothed": smoothed(loss, weight), "validation loss": finite(metrics.get("val_loss", []))}


def lr_series(metrics: dict) -> dict[str, list[tuple[float, float]]]:
    return {"learning rate": finite(metrics.get("lr", []))}


def line_summary(series: dict[str, list[tuple[float, float]]]) -> str:
    """The last value of each line with its step; data-points: the first line's point count."""
    first = next(iter(series.values()), [])
    parts = [f"{name} <b>{points[-1][1]:.4g}</b> (step {points[-1][0]:g})" for name, points in series.items()
             if points]
    text = " · ".join(parts) or "no data yet"
    last = f" data-last='{first[-1][1]:.6g}'" if first else ""
    return f"<div class='chart-summary' data-points='{len(first)}'{last}>{text}</div>"


def bar_frame(rows: list[dict]) -> pd.DataFrame:
    """One bar per {"label", "count"} row, in the given order."""
    frame = pd.DataFrame([(str(r["label"]), int(r["count"])) for r in rows], columns=["label", "count"])
    return frame.astype({"label": str, "count": int})


def bar_summary(rows: list[dict], unit: str) -> str:
    """How many counted in how many bars; data-total and data-counts (comma-separated, in bar order)."""
    counts = [int(r["count"]) for r in rows]
    text = f"{sum(counts)} {unit} in {len(counts)} group(s)" if counts else "no data yet"
    return (f"<div class='chart-summary' data-total='{sum(counts)}' data-bars='{len(counts)}' "
            f"data-counts='{','.join(map(str, counts))}'>{html.escape(text)}</div>")


def bar_chart_html(rows: list[dict], title: str, elem_class: str = "bar-chart") -> str:
    """Horizontal bars drawn as HTML, one per {"label", "count"} row (the Cleaning tab's tag counts)."""
    peak = max((r["count"] for r in rows), default=0) or 1
    bars = "".join(
        f"<div style='display:flex;align-items:center;gap:8px;margin:2px 0'>"
        f"<span style='width:110px;text-align:right;font-size:0.85em'>{html.escape(str(r['label']))}</span>"
        f"<span style='flex:1;background:#eee;border-radius:3px'><span style='display:block;height:14px;"
        f"width:{100.0 * r['count'] / peak:.1f}%;background:#f97316;border-radius:3px'></span></span>"
        f"<span class='bar-count' style='width:48px;font-size:0.85em'>{r['count']}</span></div>"
        for r in rows)
    body = bars or "<div style='font-size:0.85em;color:#888'>no data yet</div>"
    return f"<div class='{elem_class}'><div style='font-weight:600;margin-bottom:4px'>{html.escape(title)}</div>{body}</div>"



def line_plot(label: str, elem_id: str, height: int = 200, y_format: str | None = None) -> gr.LinePlot:
    """An empty line chart of `line_frame` rows, one colour per series (zoom and hover values come with it)."""
    return gr.LinePlot(line_frame({}), x="step", y="value", color="series", label=label, height=height,
                       x_title="step", y_title=" ", color_title=" ", y_axis_format=y_format, elem_id=elem_id)


def bar_plot(label: str, elem_id: str, height: int = 200) -> gr.BarPlot:
    """An empty bar chart of `bar_frame` rows."""
    return gr.BarPlot(bar_frame([]), x="label", y="count", label=label, height=height, x_title=" ",
                      y_title="count", elem_id=elem_id)
