"""Small charts drawn as plain HTML (no plotting library, renders the same everywhere)."""
from __future__ import annotations

import html


def bar_chart_html(rows: list[dict], title: str, elem_class: str = "bar-chart") -> str:
    """Horizontal bars, one per {"label", "count"} row, in the given order."""
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


COLORS = ("#f97316", "#2563eb", "#16a34a", "#9333ea")


def thinned(points: list[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most `limit` points, evenly spread, the last one always kept."""
    if len(points) <= limit:
        return list(points)
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit - 1)] + [points[-1]]


def line_chart_svg(series: dict[str, list[tuple[float, float]]], title: str, elem_class: str = "line-chart",
                   width: int = 420, height: int = 180, limit: int = 400, log_y: bool = False) -> str:
    """One SVG line per named series of (step, value) points, with the step range, the value range
    and the last value of each series written out (`data-points` holds each line's point count)."""
    import math

    def y_of(value: float) -> float:
        return math.log10(value) if log_y else value

    drawn = {name: [(x, y) for x, y in thinned(points, limit) if math.isfinite(y) and (y > 0 or not log_y)]
             for name, points in series.items() if points}
    drawn = {name: points for name, points in drawn.items() if points}
    head = f"<div style='font-weight:600'>{html.escape(title)}</div>"
    if not drawn:
        return f"<div class='{elem_class}'>{head}<div style='font-size:0.85em;color:#888'>no data yet</div></div>"
    xs = [x for points in drawn.values() for x, _ in points]
    ys = [y_of(y) for points in drawn.values() for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    pad = 6

    def scale(x: float, y: float) -> str:
        px = pad + (width - 2 * pad) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.5)
        py = height - pad - (height - 2 * pad) * ((y_of(y) - y0) / (y1 - y0) if y1 > y0 else 0.5)
        return f"{px:.1f},{py:.1f}"

    lines, legend = [], []
    for (name, points), color in zip(drawn.items(), COLORS * 4):
        coords = " ".join(scale(x, y) for x, y in points)
        lines.append(f"<polyline class='series' data-name='{html.escape(name)}' data-points='{len(points)}' "
                     f"fill='none' stroke='{color}' stroke-width='1.5' points='{coords}'/>")
        legend.append(f"<span style='color:{color}'>■</span> {html.escape(name)} <b class='last-value'>"
                      f"{points[-1][1]:.4g}</b> (step {points[-1][0]:g})")
    low, high = (10 ** y0, 10 ** y1) if log_y else (y0, y1)
    return (f"<div class='{elem_class}'>{head}"
            f"<svg viewBox='0 0 {width} {height}' width='100%' style='max-width:{width}px;background:#fafafa;"
            f"border:1px solid #eee'>{''.join(lines)}</svg>"
            f"<div style='font-size:0.8em'>{' · '.join(legend)}</div>"
            f"<div style='font-size:0.75em;color:#666'>steps {x0:g}–{x1:g} · values {low:.4g}–{high:.4g}"
            f"{' (log scale)' if log_y else ''}</div></div>")
