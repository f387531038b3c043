"""Spreadsheets (Office Open XML) with typed cells, written by openpyxl in write-only mode.

What CSV cannot say, a cell type can: times are date-time cells in the report's time
zone (Excel keeps no zone, so the header names it), numbers that are not quantities
(phone numbers, caller IDs, DIDs, Linkedids) are text cells, so leading zeros and
``.10`` stay as they are without a visible apostrophe, and figures are numbers with a
display format (percentages, seconds). A text cell is never a formula, whatever it
starts with: the cell type says so, no prefix is needed. Headers are for people, in
the report's language.

Write-only mode streams rows to the file, so memory stays flat; a sheet holds at most
1,048,576 rows, so a longer export continues on a second sheet.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, tzinfo
from typing import IO, Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from sqlalchemy.ext.asyncio import AsyncEngine

from callbackd.adapters import models as m
from callbackd.adapters.reports import queries
from callbackd.adapters.reports.columns import (
    DURATIONS,
    RATIOS,
    export_header,
    figure_header,
    key_cell,
    key_header,
    total_label,
)
from callbackd.domain.metrics import FIGURE_NAMES, Grouping, Report

MAX_ROWS = 1_048_576  # Excel's limit per sheet, header included
DATETIME = "yyyy-mm-dd hh:mm:ss"
DATE = "yyyy-mm-dd"
HOUR = "yyyy-mm-dd hh:mm"
TEXT = "@"
PERCENT = "0.0%"
SECONDS = "0.0"
RATIO = "0.00"
_BOLD = Font(bold=True)


class Sheet:
    """A write-only sheet that makes typed cells; long exports roll over to a new sheet."""

    def __init__(self, book: Workbook, title: str, header: list[str], widths: list[int]) -> None:
        self.book = book
        self.title = title
        self.header = header
        self.widths = widths
        self.part = 0
        self.rows = 0
        self.ws: WriteOnlyWorksheet = self._new_sheet()

    def _new_sheet(self) -> WriteOnlyWorksheet:
        self.part += 1
        title = self.title if self.part == 1 else f"{self.title} ({self.part})"
        ws = self.ws = self.book.create_sheet(title)
        for i, width in enumerate(self.widths):
            ws.column_dimensions[get_column_letter(i + 1)].width = width
        ws.freeze_panes = "A2"
        ws.append([self.styled(h, font=_BOLD) for h in self.header])
        self.rows = 1
        return ws

    def append(self, cells: list[Any]) -> None:
        if self.rows >= MAX_ROWS:
            self.ws = self._new_sheet()
        self.ws.append(cells)
        self.rows += 1

    def styled(self, value: Any, *, number_format: str | None = None, font: Font | None = None) -> Any:
        cell = WriteOnlyCell(self.ws)
        if isinstance(value, str):
            cell.value = clean_text(value)
            cell.data_type = "s"  # openpyxl would take a leading '=' for a formula
        else:
            cell.value = value
        if number_format:
            cell.number_format = number_format
        if font:
            cell.font = font
        return cell

    def text(self, value: str | None) -> Any:
        return None if value is None else self.styled(value, number_format=TEXT)


def clean_text(value: str) -> str:
    """Drop the control characters XML 1.0 cannot hold (a hostile caller name must not break the file)."""
    return ILLEGAL_CHARACTERS_RE.sub("", value)[:32767]


def local(value: datetime, tz: tzinfo) -> datetime:
    """An aware time as the naive wall-clock time in *tz*: what a spreadsheet cell can hold."""
    return value.astimezone(tz).replace(tzinfo=None)


# -- the report ------------------------------------------------------------------------------


def _key_value(report: Report, key: str) -> Any:
    """Day and hour keys become date and date-time cells; the rest stay text."""
    if report.by is Grouping.DAY:
        return date.fromisoformat(key), DATE
    if report.by is Grouping.HOUR:
        return local(datetime.fromisoformat(key), report.tz), HOUR
    return key_cell(key), TEXT


def _figure_cell(sheet: Sheet, name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in RATIOS:
        return sheet.styled(value, number_format=PERCENT)
    if name in DURATIONS:
        return sheet.styled(value, number_format=SECONDS)
    if isinstance(value, float):
        return sheet.styled(value, number_format=RATIO)
    return value


def write_report_xlsx(report: Report, out: IO[bytes], language: str) -> None:
    """One sheet: a row per group and a total row, every figure a number."""
    book = Workbook(write_only=True)
    header = [key_header(report, language), *(figure_header(n, language) for n in FIGURE_NAMES)]
    sheet = Sheet(book, _report_title(report, language), header, [18, *(14 for _ in FIGURE_NAMES)])
    for key, fig in report.rows:
        value, fmt = _key_value(report, key)
        first = sheet.text(value) if fmt == TEXT else sheet.styled(value, number_format=fmt)
        sheet.append([first, *(_figure_cell(sheet, n, getattr(fig, n)) for n in FIGURE_NAMES)])
    total = [sheet.styled(total_label(language), font=_BOLD)]
    sheet.append(total + [_figure_cell(sheet, n, getattr(report.total, n)) for n in FIGURE_NAMES])
    _period_sheet(book, report, language)
    book.save(out)


def _report_title(report: Report, language: str) -> str:
    return "Отчёт" if language == "ru" else "Report"


def _period_sheet(book: Workbook, report: Report, language: str) -> None:
    """What the figures cover: period, zone and thresholds, so a copied file still says it."""
    ru = language == "ru"
    sheet = Sheet(book, "Период" if ru else "Period", ["", ""], [32, 24])
    t = report.thresholds
    start = sheet.styled(local(report.start, report.tz), number_format=DATETIME)
    end = sheet.styled(local(report.end, report.tz), number_format=DATETIME)
    rows = [
        ("С" if ru else "From", start),
        ("До (не включая)" if ru else "To (exclusive)", end),
        ("Часовой пояс" if ru else "Time zone", sheet.text(report.timezone)),
        ("Короткий сброс короче, с" if ru else "Short abandon under, s", t.short_abandon.total_seconds()),
        (
            "Уровень сервиса: ответ за, с" if ru else "Service level: within, s",
            t.service_level.total_seconds(),
        ),
    ]
    for label, value in rows:
        sheet.append([sheet.text(label), value])


# -- exports ----------------------------------------------------------------------------------


def _converter(sheet: Sheet, column: Any, tz: tzinfo) -> Callable[[Any], Any]:
    """How a value of *column* becomes a cell (timestamps come from the query as UTC text)."""
    if isinstance(column.type, m.UTCDateTime):
        cache: dict[str, datetime] = {}

        def when(text: str | None) -> Any:
            if text is None:
                return None
            # Zone offsets change on whole minutes: the local minute is worked out once per UTC minute.
            minute = text[:16]
            base = cache.get(minute)
            if base is None:
                if len(cache) > 100_000:
                    cache.clear()
                base = cache[minute] = local(datetime.fromisoformat(minute + "+00:00"), tz)
            return sheet.styled(base + timedelta(seconds=float(text[17:])), number_format=DATETIME)

        return when
    try:
        py = column.type.python_type
    except NotImplementedError:
        py = None
    if py is str:
        return sheet.text
    if py is int or py is bool:
        return lambda v: v
    return lambda v: (
        None if v is None else sheet.text(",".join(map(str, v)) if isinstance(v, list) else str(v))
    )


async def export_xlsx(
    engine: AsyncEngine,
    what: str,
    start: datetime,
    end: datetime,
    out: IO[bytes],
    tz: tzinfo,
    language: str,
) -> int:
    """Every column of *what* for rows in the period, one typed cell each; returns the row count."""
    columns = queries.export_columns(what)
    book = Workbook(write_only=True)
    header = [export_header(what, c.name, language) for c in columns]
    widths = [20 if isinstance(c.type, m.UTCDateTime) else 14 for c in columns]
    sheet = Sheet(book, _EXPORT_TITLES[what][language == "ru"], header, widths)
    convert = [_converter(sheet, c, tz) for c in columns]
    count = 0
    with queries.gc_paused():
        async for part in queries.export_batches(engine, what, start, end):
            for row in part:
                sheet.append([f(v) for f, v in zip(convert, row, strict=True)])
            count += len(part)
    book.save(out)
    return count


_EXPORT_TITLES = {
    "calls": ("Calls", "Звонки"),
    "requests": ("Requests", "Заявки"),
    "attempts": ("Attempts", "Попытки"),
}
