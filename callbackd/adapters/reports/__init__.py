"""Reports and exports straight from the database, in the format asked for.

:mod:`.queries` streams the rows; one renderer per format turns them into a file:
:mod:`.csv_out` (machines, and spreadsheets opened by hand), :mod:`.xlsx` (typed cells,
localized headers), :mod:`.table` (a terminal) and :mod:`.json_out` (the API and the
console). :mod:`.columns` names the figures and their units once for all of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from callbackd.adapters.files import atomic_text, atomic_write
from callbackd.adapters.reports.csv_out import CsvWriter, LocalTimes, export_csv, write_report_csv
from callbackd.adapters.reports.figures import period_report
from callbackd.adapters.reports.json_out import report_dict, write_report_json
from callbackd.adapters.reports.queries import build_recovery, build_report, call_batches, request_batches
from callbackd.adapters.reports.recovery import recovery_dict, render_recovery, write_recovery
from callbackd.adapters.reports.settings import CsvOptions, ReportSettings
from callbackd.adapters.reports.table import render_table
from callbackd.adapters.reports.xlsx import export_xlsx, write_report_xlsx
from callbackd.domain.metrics import Report

REPORT_FORMATS = ("table", "csv", "json", "xlsx")
EXPORT_FORMATS = ("csv", "xlsx")
BINARY_FORMATS = frozenset({"xlsx"})

__all__ = [
    "BINARY_FORMATS",
    "EXPORT_FORMATS",
    "REPORT_FORMATS",
    "CsvOptions",
    "CsvWriter",
    "LocalTimes",
    "ReportSettings",
    "atomic_text",
    "atomic_write",
    "build_recovery",
    "build_report",
    "call_batches",
    "export",
    "period_report",
    "recovery_dict",
    "render_recovery",
    "render_table",
    "report_dict",
    "request_batches",
    "write_recovery",
    "write_report",
    "write_report_csv",
]


def write_report(
    report: Report, out: IO[Any], fmt: str, settings: ReportSettings, options: CsvOptions
) -> None:
    """*out* is binary for the formats in :data:`BINARY_FORMATS`, text otherwise."""
    if fmt == "csv":
        write_report_csv(report, out, options, settings.tz)
    elif fmt == "json":
        write_report_json(report, out)
    elif fmt == "xlsx":
        write_report_xlsx(report, out, settings.language)
    else:
        out.write(render_table(report))


async def export(
    engine: AsyncEngine,
    what: str,
    start: datetime,
    end: datetime,
    out: IO[Any],
    settings: ReportSettings,
    options: CsvOptions,
    *,
    fmt: str = "csv",
) -> int:
    """Every column of *what* ("calls", "requests", "attempts") for rows in the period; returns the count."""
    if fmt == "xlsx":
        return await export_xlsx(engine, what, start, end, out, settings.tz, settings.language)
    return await export_csv(engine, what, start, end, out, options, settings.tz)
