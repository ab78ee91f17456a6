"""The data behind the GUI's charts (tabs/charts.py): rows -> DataFrames for gr.LinePlot / gr.BarPlot, summaries."""
import math

import pytest

from tabs.charts import bar_frame, bar_summary, line_frame, line_summary, loss_series, lr_series, smoothed


def test_smoothing_is_a_debiased_moving_average():
    points = [(1, 4.0), (2, 2.0), (3, 1.0)]
    assert smoothed(points, 0.0) == points
    assert smoothed([(s, 3.0) for s in range(1, 50)], 0.99)[-1][1] == pytest.approx(3.0)  # no pull towards 0
    first, second, _ = smoothed(points, 0.5)
    assert first == (1, 4.0)  # debiased: the first value is the first point
    assert second[1] == pytest.approx((0.5 * 0.5 * 4 + 0.5 * 2) / (1 - 0.25))


def test_line_frame_rows_are_step_value_series_without_nan_and_thinned():
    frame = line_frame({"loss": [(1, 0.5), (2, math.nan), (3, 0.25), (4, math.inf)], "lr": []})
    assert list(frame.columns) == ["step", "value", "series"]
    assert frame.values.tolist() == [[1.0, 0.5, "loss"], [3.0, 0.25, "loss"]]
    long = line_frame({"loss": [(s, 1.0 / s) for s in range(1, 2001)]}, limit=100)
    assert len(long) == 100 and long["step"].iloc[-1] == 2000  # the last point always kept
    assert line_frame({}).empty and list(line_frame({}).columns) == ["step", "value", "series"]


def test_loss_and_lr_series_from_metric_events():
    metrics = {"loss": [(1, 1.0), (2, 0.0), (3, None)], "val_loss": [(2, 0.7)], "lr": [(1, 1e-4), (2, 5e-5)]}
    series = loss_series(metrics, weight=0.5)
    assert list(series) == ["loss", "smoothed", "validation loss"]
    assert series["loss"] == [(1, 1.0), (2, 0.0)] and series["validation loss"] == [(2, 0.7)]
    assert series["smoothed"][-1][1] == pytest.approx(0.25 / 0.75)
    frame = line_frame(series)
    assert set(frame["series"]) == {"loss", "smoothed", "validation loss"} and len(frame) == 5
    assert lr_series(metrics) == {"learning rate": [(1, 1e-4), (2, 5e-5)]}
    assert loss_series({})["loss"] == []


def test_line_summary_names_the_last_values():
    text = line_summary({"loss": [(1, 0.5), (40, 0.1234567)], "smoothed": [(40, 0.2)], "validation loss": []})
    assert "data-points='2'" in text and "data-last='0.123457'" in text
    assert "loss <b>0.1235</b> (step 40)" in text and "smoothed <b>0.2</b>" in text and "validation" not in text
    assert "no data yet" in line_summary({"loss": []}) and "data-points='0'" in line_summary({})


def test_bar_frame_keeps_the_order_and_the_summary_counts():
    rows = [{"label": "1:1", "count": 7}, {"label": "3:2", "count": 4}, {"label": 512, "count": 1}]
    frame = bar_frame(rows)
    assert frame.values.tolist() == [["1:1", 7], ["3:2", 4], ["512", 1]]
    assert bar_frame([]).empty and list(bar_frame([]).columns) == ["label", "count"]
    summary = bar_summary(rows, "images")
    assert "data-total='12'" in summary and "data-bars='3'" in summary and "data-counts='7,4,1'" in summary
    assert "12 images in 3 group(s)" in summary
    assert "no data yet" in bar_summary([], "images")
