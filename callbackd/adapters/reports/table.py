"""The report as a plain-text table for a terminal (up to 110 columns wide)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from callbackd.adapters.reports.columns import key_name
from callbackd.domain.metrics import Figures, Report


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _dur(v: float | None) -> str:
    if v is None:
        return "-"
    s = round(v)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


_CALL_COLUMNS: tuple[tuple[str, str | tuple[str, str], Callable[[Any], str]], ...] = (
    ("Offered", "offered", str),
    ("Handled", "handled", str),
    ("Aband", "abandoned", str),
    ("Short", "short_abandoned", str),
    ("CAR", "car", _pct),
    ("NetLost", "net_lost_rate", _pct),
    ("LCR", "lcr", _pct),
    ("SL", "service_level", _pct),
    ("ASA", "asa", _dur),
    ("ATA", "ata", _dur),
    ("AHT", "aht", _dur),
)
_CALLBACK_COLUMNS: tuple[tuple[str, str | tuple[str, str], Callable[[Any], str]], ...] = (
    ("Requests", "requests", str),
    ("Tried", "attempted", str),
    ("Reached", "reached", str),
    ("Recov", "recovered", str),
    ("Expired", "expired", str),
    ("Failed", "failed", str),
    ("Cancel", "cancelled", str),
    ("Open", "open", str),
    ("First try", ("first_attempt_median", "first_attempt_p90"), _dur),
    ("Reached in", ("reach_median", "reach_p90"), _dur),
    ("Tries", "attempts_per_reached", _num),
)
CALLBACK_LEGEND = "First try, Reached in: median/p90 from the request; Tries: attempts per reached client"


def _cell(fig: Figures, name: str | tuple[str, ...], fmt: Callable[[Any], str]) -> str:
    if isinstance(name, tuple):  # median/p90 side by side
        values = [getattr(fig, n) for n in name]
        return "-" if all(v is None for v in values) else "/".join(fmt(v) for v in values)
    return fmt(getattr(fig, name))


def _table(title: str, key: str, columns, rows: list[tuple[str, Figures]]) -> list[str]:
    cells = [[k, *(_cell(f, name, fmt) for _, name, fmt in columns)] for k, f in rows]
    header = [key, *(h for h, _, _ in columns)]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )

    rule = "-" * len(line(header))
    out = [title, line(header), rule, *(line(r) for r in cells)]
    if len(cells) > 1:  # a rule above the total row
        out.insert(-1, rule)
    return out


def render_table(report: Report) -> str:
    t = report.thresholds
    start = report.start.astimezone(report.tz).isoformat(timespec="minutes")
    end = report.end.astimezone(report.tz).isoformat(timespec="minutes")
    by = f", by {report.by.value}" if report.by else ""
    rows = [*report.rows, ("TOTAL", report.total)]
    key = key_name(report)
    head = (
        f"callbackd report {start} to {end} ({report.timezone}){by}\n"
        f"short abandon < {t.short_abandon.total_seconds():g}s (left out of CAR, NetLost, LCR, SL); "
        f"service level: answered within {t.service_level.total_seconds():g}s"
    )
    calls = _table("Calls", key, _CALL_COLUMNS, rows)
    callbacks = _table("Callbacks (requests created in the period, status now)", key, _CALLBACK_COLUMNS, rows)
    return "\n".join([head, "", *calls, "", *callbacks, CALLBACK_LEGEND]) + "\n"
