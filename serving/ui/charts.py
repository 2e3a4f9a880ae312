"""Server-side SVG charts (no JavaScript, no external assets); text is escaped, output is Markup.

Every chart carries ``role="img"`` with a ``<title>``/``<desc>`` so screen readers get the numbers too.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def _money(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.1f}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"


def line_chart(
    labels: Sequence[str], values: Sequence[float], *, title: str, width: int = 640, height: int = 220
) -> Markup:
    """A probability-over-time line chart (y axis 0-100 %), one dot per point.

    Args:
        labels: X labels (dates), oldest first.
        values: Probabilities in [0, 1].
        title: Accessible title.
        width: ViewBox width (the SVG scales to its container).
        height: ViewBox height.
    """
    left, right, top, bottom = 44, 16, 14, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(values)
    xs = [left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2) for i in range(n)]
    ys = [top + plot_h * (1 - min(max(float(v), 0.0), 1.0)) for v in values]
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="lc-t lc-d" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="lc-t">{escape(title)}</title>',
        '<desc id="lc-d">'
        + escape(
            "; ".join(f"{label}: {float(v) * 100:.1f}%" for label, v in zip(labels, values, strict=True))
        )
        + "</desc>",
    ]
    for tick in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - tick / 100)
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}%</text>')
    if n:
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline class="line" points="{points}"/>')
        for x, y, label, v in zip(xs, ys, labels, values, strict=True):
            parts.append(
                f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="4"><title>{escape(label)}: '
                f"{float(v) * 100:.1f}%</title></circle>"
            )
        step = max(1, n // 6)
        shown = sorted(set(range(0, n, step)) | {n - 1})
        for i in shown:
            # End labels are anchored inwards so they are not clipped at the chart's edges.
            anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
            parts.append(
                f'<text class="axis" x="{xs[i]:.1f}" y="{height - 10}" text-anchor="{anchor}">{escape(labels[i])}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def range_bars(rows: Sequence[dict], *, title: str, width: int = 860, row_height: int = 34) -> Markup:
    """Horizontal P10-P90 bars with the P50 marked and the quota as a tick, one row per group.

    Args:
        rows: ``{"group", "p10", "p50", "p90", "quota" (or None)}`` per group.
        title: Accessible title.
        width: ViewBox width.
        row_height: Height of one group's row.
    """
    left, right, top = 130, 70, 10
    height = top + row_height * len(rows) + 26
    top_value = max(
        [max(float(r["p90"] or 0), float(r.get("quota") or 0), float(r["p50"] or 0)) for r in rows] or [1.0]
    )
    top_value = top_value * 1.05 or 1.0
    plot_w = width - left - right

    def x(value: float) -> float:
        return left + plot_w * max(float(value), 0.0) / top_value

    desc = "; ".join(
        f"{r['group']}: P50 {_money(float(r['p50']))}, range {_money(float(r['p10']))} to {_money(float(r['p90']))}"
        + (f", quota {_money(float(r['quota']))}" if r.get("quota") is not None else "")
        for r in rows
    )
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="rb-t rb-d" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="rb-t">{escape(title)}</title><desc id="rb-d">{escape(desc)}</desc>',
    ]
    for i, row in enumerate(rows):
        y = top + i * row_height
        mid = y + row_height / 2
        label = str(row["group"])
        parts.append(
            f'<text class="label" x="{left - 8}" y="{mid + 4:.1f}" text-anchor="end">{escape(label[:18])}</text>'
        )
        x10, x50, x90 = x(row["p10"]), x(row["p50"]), x(row["p90"])
        parts.append(
            f'<rect class="range" x="{x10:.1f}" y="{mid - 8:.1f}" width="{max(x90 - x10, 2):.1f}" height="16" rx="3">'
            f"<title>{escape(label)}: P10 {_money(float(row['p10']))} – P90 {_money(float(row['p90']))}</title></rect>"
        )
        parts.append(
            f'<line class="p50" x1="{x50:.1f}" x2="{x50:.1f}" y1="{mid - 12:.1f}" y2="{mid + 12:.1f}"/>'
        )
        parts.append(
            f'<text class="value" x="{width - right + 6}" y="{mid + 4:.1f}">{escape(_money(float(row["p50"])))}</text>'
        )
        if row.get("quota") is not None:
            xq = x(row["quota"])
            parts.append(
                f'<path class="quota" d="M{xq:.1f},{mid - 14:.1f} l-5,-6 h10 z"><title>quota '
                f"{escape(_money(float(row['quota'])))}</title></path>"
            )
            parts.append(
                f'<line class="quota-line" x1="{xq:.1f}" x2="{xq:.1f}" y1="{mid - 14:.1f}" y2="{mid + 12:.1f}"/>'
            )
    axis_y = top + row_height * len(rows) + 16
    for fraction in (0, 0.5, 1.0):
        value = top_value * fraction
        parts.append(
            f'<text class="axis" x="{x(value):.1f}" y="{axis_y}" text-anchor="middle">{escape(_money(value))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
