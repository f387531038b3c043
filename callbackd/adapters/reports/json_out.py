"""The report as JSON: for ``callbackd report --format json``, the API and the console's charts."""

from __future__ import annotations

import json
from typing import Any, TextIO

from callbackd.adapters.reports.columns import figure_column, figure_value, key_cell, key_name
from callbackd.domain.metrics import FIGURE_NAMES, Figures, Report


def figures_dict(fig: Figures) -> dict[str, Any]:
    return {figure_column(n): figure_value(n, getattr(fig, n)) for n in FIGURE_NAMES}


def report_dict(report: Report) -> dict[str, Any]:
    key = key_name(report)
    return {
        "from": report.start.isoformat(),
        "to": report.end.isoformat(),
        "timezone": report.timezone,
        "by": report.by.value if report.by else None,
        "short_abandon_s": report.thresholds.short_abandon.total_seconds(),
        "service_level_s": report.thresholds.service_level.total_seconds(),
        "rows": [{key: key_cell(k), **figures_dict(f)} for k, f in report.rows],
        "total": figures_dict(report.total),
    }


def write_report_json(report: Report, out: TextIO) -> None:
    json.dump(report_dict(report), out, indent=2, ensure_ascii=False)
    out.write("\n")
