"""CSV for machines and for spreadsheets opened by hand.

RFC 4180 (CRLF, quotes doubled, fields with the delimiter, a quote or a line break
quoted), opening as intended in Excel and LibreOffice: timestamps are ISO 8601 with
the report time zone's offset, an optional UTF-8 BOM and ';' with decimal commas
serve Excel in locales such as Russian, and text cells that a spreadsheet would run
as a formula are prefixed with ``'``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, tzinfo
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from callbackd.adapters import models as m
from callbackd.adapters.reports import queries
from callbackd.adapters.reports.columns import figure_column, figure_value, key_cell, key_name
from callbackd.adapters.reports.settings import CsvOptions
from callbackd.domain.metrics import FIGURE_NAMES, Report

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str) -> str:
    """Stop a spreadsheet from running the cell as a formula (OWASP: prefix with ')."""
    return "'" + text if text.startswith(FORMULA_START) else text


class CsvWriter:
    """csv.writer with the cell rules above; values may be str, int, float, bool, datetime or lists."""

    def __init__(self, out: TextIO, options: CsvOptions, tz: tzinfo) -> None:
        if options.delimiter == options.decimal:
            raise ValueError("the CSV delimiter and the decimal separator must differ")
        self.options = options
        self.tz = tz
        self._out = out
        # What makes csv.writer quote a field (QUOTE_MINIMAL), or might: NUL is left to it.
        self._special = (options.delimiter, '"', "\r", "\n", "\x00")
        if options.bom:
            out.write("\ufeff")
        self._writer = csv.writer(
            out, delimiter=options.delimiter, quotechar='"', lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL
        )

    def text(self, value: Any) -> str:
        s = value if isinstance(value, str) else str(value)
        return neutralise(s) if self.options.neutralise else s

    def cell(self, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            return self.number(value)
        if isinstance(value, datetime):
            return self.timestamp(value)
        if isinstance(value, list | tuple):
            return self.text(",".join(str(v) for v in value))
        return self.text(value)

    def number(self, value: float) -> str:
        s = repr(value)
        return s.replace(".", self.options.decimal) if self.options.decimal != "." else s

    def timestamp(self, value: datetime) -> str:
        return value.astimezone(self.tz).isoformat(timespec="seconds")

    def column_formatter(self, column) -> Callable[[tuple[Any, ...]], Iterable[Any]] | None:
        """How the export writes one batch of *column* (timestamps come as UTC text); None: as it is."""
        if isinstance(column.type, m.UTCDateTime):
            return LocalTimes(self.tz).column
        py = _python_type(column)
        if py is str:
            return _neutralise_column if self.options.neutralise else None
        if py is int:
            return None  # csv writes None as an empty field
        cell = self.cell
        return lambda values: map(cell, values)

    def row(self, values: list[Any]) -> None:
        self._writer.writerow([self.cell(v) for v in values])

    def raw(self, values: list[Any]) -> None:
        self._writer.writerow(values)

    def raw_rows(self, rows: Iterable[Iterable[Any]]) -> None:
        self._writer.writerows(rows)

    def raw_columns(self, columns: list[Iterable[Any]]) -> None:
        """Rows given column by column, written as :meth:`raw_rows` writes them.

        When no field needs quoting (a few C-speed searches per column), the lines are joined
        directly: csv.writer's per-field work was a third of an export's time. Otherwise
        the batch goes through csv.writer.
        """
        texts: list[Sequence[str]] = []
        clean = len(columns) > 1
        for values in columns:
            if not isinstance(values, list | tuple):
                values = list(values)
            try:
                joined = "".join(values)  # every value a str already (times, text columns): as they are
            except TypeError:
                values = _texts(values)
                joined = "".join(values)
            texts.append(values)
            clean = clean and not any(c in joined for c in self._special)
        if not clean:
            self._writer.writerows(zip(*texts, strict=True))
            return
        if texts[0]:  # no rows, no line
            lines = map(self.options.delimiter.join, zip(*texts, strict=True))
            self._out.write("\r\n".join(lines) + "\r\n")


def _texts(values: Iterable[Any]) -> list[str]:
    """A column's values as csv.writer writes them: None empty, other values by str()."""
    return ["" if v is None else v if v.__class__ is str else str(v) for v in values]


def _neutralise_or_none(value: str | None) -> str | None:
    return "'" + value if value and value.startswith(FORMULA_START) else value


_FORMULA_ANYWHERE = re.compile(r"(?:^|\n)[=+\-@\t\r]")


def _neutralise_column(values: tuple[str | None, ...]) -> Iterable[str | None]:
    """One C-speed search over the whole batch; cells are looked at one by one only on a hit.

    A hit may be a false alarm (a line inside a cell starting with '='): the per-cell check
    then decides, so the result is the same, only slower.
    """
    if _FORMULA_ANYWHERE.search("\n".join(filter(None, values))) is None:
        return values
    return map(_neutralise_or_none, values)


class LocalTimes:
    """UTC text -> ISO 8601 in *tz* with its offset, e.g. ``2026-03-02T00:30:09+03:00``.

    The local minute and the offset are worked out once per UTC minute and cached: zone
    offsets change only on whole minutes, so the seconds carry over as they are.
    """

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.cache: dict[str, tuple[str, str]] = {}

    def column(self, values: Iterable[str | None]) -> list[str]:
        """:meth:`__call__` over a batch, the cache looked up inline (one call per value less)."""
        get, one = self.cache.get, self
        return [
            "" if t is None else h[0] + t[16:19] + h[1] if (h := get(t[:16])) is not None else one(t)
            for t in values
        ]

    def __call__(self, text: str | None) -> str:
        if text is None:
            return ""
        minute = text[:16]
        hit = self.cache.get(minute)
        if hit is None:
            if len(self.cache) > 100_000:
                self.cache.clear()
            local = datetime.fromisoformat(minute + "+00:00").astimezone(self.tz).isoformat()
            hit = self.cache[minute] = (local[:16], local[19:])
        return hit[0] + text[16:19] + hit[1]


def _python_type(column) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


# -- a report and an export ------------------------------------------------------------


def write_report_csv(report: Report, out: TextIO, options: CsvOptions, tz: tzinfo) -> None:
    w = CsvWriter(out, options, tz)
    w.row([key_name(report), *(figure_column(n) for n in FIGURE_NAMES)])
    for key, fig in [*report.rows, ("TOTAL", report.total)]:
        w.row([key_cell(key), *(figure_value(n, getattr(fig, n)) for n in FIGURE_NAMES)])


async def export_csv(
    engine: AsyncEngine,
    what: str,
    start: datetime,
    end: datetime,
    out: TextIO,
    options: CsvOptions,
    tz: tzinfo,
) -> int:
    """Every column of *what* for rows in the period, as CSV; returns the count."""
    columns = queries.export_columns(what)
    w = CsvWriter(out, options, tz)
    w.raw([c.name for c in columns])
    plan = [(i, f) for i, f in enumerate(w.column_formatter(c) for c in columns) if f is not None]
    count = 0
    with queries.gc_paused():
        async for part in queries.export_batches(engine, what, start, end):
            # Column by column: a map per column, or nothing at all, instead of a call per cell.
            cols: list[Iterable[Any]] = list(zip(*part, strict=True))
            for i, f in plan:
                cols[i] = f(cols[i])
            w.raw_columns(cols)
            count += len(part)
    return count
