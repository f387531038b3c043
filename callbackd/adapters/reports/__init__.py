"""Reports and exports straight from the database, in the format asked for.

:mod:`.queries` streams the rows; one renderer per format turns them into a file:
:mod:`.csv_out` (machines, and spreadsheets opened by hand), :mod:`.xlsx` (typed cells,
localized headers), :mod:`.table` (a terminal) and :mod:`.json_out` (the API and the
console). :mod:`.columns` names the figures and their units once for all of them.
"""

from __future__ import annotations

from datetime import datetime
from importlib import import_module
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from callbackd.adapters.files import atomic_text, atomic_write
    from callbackd.adapters.reports.csv_out import CsvWriter, LocalTimes, write_report_csv
    from callbackd.adapters.reports.figures import period_report
    from callbackd.adapters.reports.json_out import report_dict
    from callbackd.adapters.reports.queries import (
        build_recovery,
        build_report,
        call_batches,
        request_batches,
    )
    from callbackd.adapters.reports.recovery import recovery_dict, render_recovery, write_recovery
    from callbackd.adapters.reports.settings import CsvOptions, ReportSettings
    from callbackd.adapters.reports.table import render_table
    from callbackd.domain.metrics import Report

# Each name, loaded from its module on first use: the daemon needs ReportSettings (its status
# line) and the touches' fold (.touches), not the renderers; the xlsx one alone brings openpyxl (~5 MB).
_LAZY = {
    "atomic_text": "callbackd.adapters.files",
    "atomic_write": "callbackd.adapters.files",
    "CsvWriter": "callbackd.adapters.reports.csv_out",
    "LocalTimes": "callbackd.adapters.reports.csv_out",
    "export_csv": "callbackd.adapters.reports.csv_out",
    "write_report_csv": "callbackd.adapters.reports.csv_out",
    "report_dict": "callbackd.adapters.reports.json_out",
    "write_report_json": "callbackd.adapters.reports.json_out",
    "build_recovery": "callbackd.adapters.reports.queries",
    "build_report": "callbackd.adapters.reports.queries",
    "call_batches": "callbackd.adapters.reports.queries",
    "request_batches": "callbackd.adapters.reports.queries",
    "recovery_dict": "callbackd.adapters.reports.recovery",
    "render_recovery": "callbackd.adapters.reports.recovery",
    "write_recovery": "callbackd.adapters.reports.recovery",
    "CsvOptions": "callbackd.adapters.reports.settings",
    "ReportSettings": "callbackd.adapters.reports.settings",
    "render_table": "callbackd.adapters.reports.table",
    "export_xlsx": "callbackd.adapters.reports.xlsx",
    "write_report_xlsx": "callbackd.adapters.reports.xlsx",
    "period_report": "callbackd.adapters.reports.figures",
}
_SUBMODULES = frozenset(
    {
        "columns",
        "csv_out",
        "figures",
        "json_out",
        "queries",
        "recovery",
        "settings",
        "table",
        "touches",
        "xlsx",
    }
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


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
        from callbackd.adapters.reports.csv_out import write_report_csv

        write_report_csv(report, out, options, settings.tz)
    elif fmt == "json":
        from callbackd.adapters.reports.json_out import write_report_json

        write_report_json(report, out)
    elif fmt == "xlsx":
        from callbackd.adapters.reports.xlsx import write_report_xlsx

        write_report_xlsx(report, out, settings.language)
    else:
        from callbackd.adapters.reports.table import render_table

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
        from callbackd.adapters.reports.xlsx import export_xlsx

        return await export_xlsx(engine, what, start, end, out, settings.tz, settings.language)
    from callbackd.adapters.reports.csv_out import export_csv

    return await export_csv(engine, what, start, end, out, options, settings.tz)
