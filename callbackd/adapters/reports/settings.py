"""How reports and exports are written: time zone, thresholds, CSV dialect, language."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from callbackd.domain.metrics import Thresholds


@dataclass(frozen=True)
class CsvOptions:
    bom: bool = False
    delimiter: str = ","
    neutralise: bool = True
    decimal: str = "."

    @classmethod
    def excel_ru(cls) -> CsvOptions:
        """Excel in a Russian (or most European) locale: BOM, ';' lists and decimal commas."""
        return cls(bom=True, delimiter=";", decimal=",")


@dataclass(frozen=True)
class ReportSettings:
    tz: ZoneInfo
    thresholds: Thresholds
    csv: CsvOptions
    language: str = "en"

    @classmethod
    def from_config(cls, cfg: Any) -> ReportSettings:
        r = cfg.reports
        return cls(
            tz=ZoneInfo(r.timezone or cfg.schedule.timezone),
            thresholds=Thresholds(
                short_abandon=r.short_abandon if r.short_abandon is not None else cfg.detection.short_abandon,
                service_level=r.service_level,
            ),
            csv=CsvOptions(bom=r.csv_bom, delimiter=r.csv_delimiter, decimal=r.csv_decimal),
            language=r.language,
        )
