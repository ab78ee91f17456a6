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
