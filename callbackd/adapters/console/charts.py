"""Hand-written SVG charts: no script library to ship, and they render with JavaScript off.

Each bar carries ``data-series`` and ``data-value`` so a test can read the figures back.
"""

from __future__ import annotations

from html import escape

COLOURS = ("#c0392b", "#2c7fb8", "#7f8c8d")
FIELD_REACH = (80.5, 12.0, 4.5, 2.0, 1.0)  # % of reached clients reached on try 1..5 (field figures)


def grouped_bars(
    labels: list[str], series: list[tuple[str, list[float | None]]], *, unit: str = "%", height: int = 220
) -> str:
    """Bars side by side per label (e.g. CAR next to net lost rate per hour)."""
    values = [v for _, vs in series for v in vs if v is not None]
    top = max([*values, 1e-9])
    n = max(len(labels), 1)
    group_w = max(24, min(60, 900 // n))
    bar_w = (group_w - 6) / max(len(series), 1)
    width = 40 + n * group_w
    plot_h = height - 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">',
        f'<line x1="38" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#999"/>',
        f'<text x="2" y="12" font-size="10">{top:.1f}{escape(unit)}</text>',
    ]
    for i, label in enumerate(labels):
        x0 = 40 + i * group_w
        for j, (name, vs) in enumerate(series):
            v = vs[i]
            h = 0 if v is None else plot_h * v / top
            x = x0 + j * bar_w
            shown = "" if v is None else f"{v:.2f}"
            colour = COLOURS[j % len(COLOURS)]
            name_, label_ = escape(name), escape(label)
            parts.append(
                f'<rect x="{x:.1f}" y="{plot_h - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                f'fill="{colour}" data-series="{name_}" data-label="{label_}" data-value="{shown}">'
                f"<title>{name_} {label_}: {shown}{escape(unit)}</title></rect>"
            )
        if n <= 31 or i % max(1, n // 24) == 0:
            short = escape(label[-11:-6] if len(label) > 10 else label)  # "HH:MM" of an hour key
            parts.append(f'<text x="{x0}" y="{plot_h + 14}" font-size="10">{short}</text>')
    for j, (name, _) in enumerate(series):
        colour = COLOURS[j % len(COLOURS)]
        parts.append(
            f'<rect x="{40 + j * 150}" y="{height - 14}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{54 + j * 150}" y="{height - 5}" font-size="11">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def reach_shares(counts: dict[int, int]) -> list[float | None]:
    """% of reached clients reached on try 1, 2, 3, 4 and 5 or later."""
    total = sum(counts.values())
    if not total:
        return [None] * 5
    buckets = [counts.get(k, 0) for k in range(1, 5)] + [sum(v for k, v in counts.items() if k >= 5)]
    return [100 * b / total for b in buckets]
