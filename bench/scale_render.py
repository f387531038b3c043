#!/usr/bin/env python3
"""bench/scale.json (runs of bench_scale.py) -> bench/scale.md (table) and bench/scale.svg (plot).

The plot is plain SVG written here (no plotting library among the dependencies): how the
reaction (abandon -> operator INVITE, p50 and p99), the daemon's CPU and its RSS grow with
the number of operators.

    python bench/scale_render.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
SCALE_JSON = BENCH / "scale.json"


def load() -> list[dict[str, Any]]:
    return json.loads(SCALE_JSON.read_text()) if SCALE_JSON.exists() else []


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| operators | calls (bursts of 50 in 5 s, every) | abandoned | callbacks | abandon → INVITE"
        " p50 / p99,"
        " operator free (ms) | same, all calls (ms) | in flight at peak | claim p50 / p99 (ms) |"
        " event lag p50 / p99 (ms) | daemon CPU median / max (%) | daemon RSS max (MB) | double dials |"
        " lost |"
        " load average |\n|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--|\n"
    )
    rows = []
    for r in runs:
        free, every = r["invite_free_ms"], r["every_s"]
        rows.append(
            f"| {r['operators']} | {r['calls']:,} ({every:g} s) | {r['abandoned']} | {r['callbacks']}"
            f" | {fmt(free['p50'])} / {fmt(free['p99'])} (n={free['n']})"
            f" | {fmt(r['invite_all_ms']['p50'])} / {fmt(r['invite_all_ms']['p99'])}"
            f" | {r['in_flight_peak']} | {fmt(r['claim_ms']['p50'])} / {fmt(r['claim_ms']['p99'])}"
            f" | {fmt(r['event_lag_ms']['p50'])} / {fmt(r['event_lag_ms']['p99'])}"
            f" | {fmt(r['cpu_pct']['p50'])} / {fmt(r['cpu_pct']['max'])} | {fmt(r['rss_mb']['max'])}"
            f" | {r['double_dials']} | {r['lost']} | {', '.join(f'{x:.1f}' for x in r['load_average'])} |"
        )
    return head + "\n".join(rows) + "\n"


def markdown(runs: list[dict[str, Any]]) -> str:
    when = ", ".join(sorted({r["when"] for r in runs}))
    return (
        "# Scale on the real lab\n\n"
        "`bench/bench_scale.py` on the lab (`asterisk/lab up --operators N`: op1 and op2 plus op3..opN"
        " answering"
        " at one SIPp, all in the support queue) with `callbackd run` at `max_concurrent = N`. Callers"
        " ring the"
        " sales queue (nobody free there) and hang up after 1 s, in bursts of 50 within 5 s; each"
        " callback reaches"
        " a PSTN number that answers busy, so it is over about two seconds after the operator answers."
        " Abandon time is Asterisk's QueueCallerAbandon Timestamp, INVITE time the operator SIPp's"
        " message trace;"
        " claim is the daemon's request.stored -> operator.ringing; event lag is Asterisk's Hangup of"
        " the caller"
        " -> the daemon's call.missed line; double dials are numbers the PSTN got more than one INVITE for."
        f" Measured {when} on a shared 2-core machine (load average at the end of each run in the table).\n\n"
        + table(runs)
        + "".join(f"\n- {n}" for n in notes(runs))
        + "\n\n![reaction, CPU and RSS against operators](scale.svg)\n"
    )


def notes(runs: list[dict[str, Any]]) -> list[str]:
    out = []
    short = [r for r in runs if r["calls"] < 1000]
    if short:
        out.append(
            "Shorter runs (time): "
            + ", ".join(f"{r['operators']} operators {r['calls']} calls" for r in short)
            + "; the issue's 1,000 calls over 10 minutes ran at "
            + (", ".join(str(r["operators"]) for r in runs if r["calls"] >= 1000) or "none")
            + " operators."
        )
    for r in runs:
        if r["in_flight_peak"] >= r["operators"]:
            out.append(
                f"At {r['operators']} operators a burst keeps every operator busy"
                f" ({r['in_flight_peak']} in flight"
                " at peak): most callers wait for the next free operator, about two seconds. 'Operator free'"
                " counts an operator busy from the daemon's Originate to the Hangup of its leg, so a call"
                " abandoned just as a leg ended can count as free before the queue has seen that operator"
                " idle: the p99 of the free calls is such a call."
            )
    out.append(
        "The daemon runs from the test environment here (its RSS includes what the test extras load);"
        " the footprint benchmark measures a production install."
    )
    return out


def svg(runs: list[dict[str, Any]]) -> str:
    """Three small panels sharing the x axis (operators)."""
    xs = [r["operators"] for r in runs]
    panels = [
        (
            "abandon → operator INVITE (ms)",
            [
                ("p50", "#1f77b4", [r["invite_free_ms"]["p50"] for r in runs]),
                ("p99", "#d62728", [r["invite_free_ms"]["p99"] for r in runs]),
            ],
        ),
        (
            "daemon CPU (%)",
            [
                ("median", "#1f77b4", [r["cpu_pct"]["p50"] for r in runs]),
                ("max", "#d62728", [r["cpu_pct"]["max"] for r in runs]),
            ],
        ),
        ("daemon RSS (MB)", [("max", "#2ca02c", [r["rss_mb"]["max"] for r in runs])]),
    ]
    w, h, pad_l, pad_r, pad_t, pad_b = 300, 220, 50, 15, 30, 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(panels)}" height="{h}"'
        ' font-family="sans-serif" font-size="11">',
        f'<rect width="{w * len(panels)}" height="{h}" fill="white"/>',
    ]
    x_max = max(xs) if xs else 1
    for i, (title, series) in enumerate(panels):
        ox = i * w
        values = [v for _, _, vs in series for v in vs if v is not None]
        y_max = max(values) * 1.15 if values else 1.0
        y_max = y_max or 1.0

        def px(x: float, ox: int = ox) -> float:
            return ox + pad_l + (x / x_max) * (w - pad_l - pad_r)

        def py(y: float, y_max: float = y_max) -> float:
            return pad_t + (1 - y / y_max) * (h - pad_t - pad_b)

        out.append(f'<text x="{ox + w / 2}" y="16" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(
            f'<line x1="{ox + pad_l}" y1="{py(0)}" x2="{ox + w - pad_r}" y2="{py(0)}" stroke="black"/>'
            f'<line x1="{ox + pad_l}" y1="{pad_t}" x2="{ox + pad_l}" y2="{py(0)}" stroke="black"/>'
        )
        for k in range(5):
            y = y_max * k / 4
            out.append(
                f'<text x="{ox + pad_l - 4}" y="{py(y) + 4:.1f}" text-anchor="end">{y:,.0f}</text>'
                f'<line x1="{ox + pad_l}" y1="{py(y):.1f}" x2="{ox + w - pad_r}" y2="{py(y):.1f}"'
                ' stroke="#ddd"/>'
            )
        for x in xs:
            out.append(f'<text x="{px(x):.1f}" y="{h - pad_b + 14}" text-anchor="middle">{x}</text>')
        out.append(f'<text x="{ox + w / 2}" y="{h - 8}" text-anchor="middle">operators</text>')
        for j, (name, colour, vs) in enumerate(series):
            pts = [(px(x), py(v)) for x, v in zip(xs, vs, strict=True) if v is not None]
            if pts:
                path = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
                out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
                out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>' for a, b in pts]
            out.append(f'<text x="{ox + pad_l + 8}" y="{pad_t + 12 + 13 * j}" fill="{colour}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    runs = sorted(load(), key=lambda r: r["operators"])
    if not runs:
        print(f"no runs in {SCALE_JSON}")
        return 1
    (BENCH / "scale.md").write_text(markdown(runs))
    (BENCH / "scale.svg").write_text(svg(runs))
    print(f"written {BENCH / 'scale.md'} and {BENCH / 'scale.svg'} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
