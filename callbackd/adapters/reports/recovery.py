"""The recovery analytics as CSV, JSON and a terminal table (``callbackd report --recovery``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import tzinfo
from typing import Any, TextIO

from callbackd.adapters.reports.columns import key_cell as _key
from callbackd.adapters.reports.csv_out import CsvWriter
from callbackd.adapters.reports.settings import CsvOptions
from callbackd.adapters.reports.table import _dur, _num, _pct
from callbackd.domain.analytics import FIELD_REACH_SHARES, TRY_BUCKETS, Recovery, RecoveryReport


def _share(v: float | None) -> str:
    return "-" if v is None else f"{round(v * 100, 1):g}"


def _recovery_dict(fig: Recovery) -> dict[str, Any]:
    out = {
        "requests": fig.requests,
        "reached_by_callback": fig.reached_by_callback,
        "recovered_by_client": fig.recovered_by_client,
        "recovered_by_operator": fig.recovered_by_operator,
        "not_recovered": fig.not_recovered,
        "open": fig.open,
        "reach_by_try": list(fig.reach_by_try),
        "reach_share_by_try_pct": [None if v is None else round(v * 100, 2) for v in fig.reach_share_by_try],
        "first_attempt_median_s": fig.first_attempt_median,
        "first_attempt_p90_s": fig.first_attempt_p90,
        "callback_wait_median_s": fig.callback_wait_median,
        "callback_wait_p90_s": fig.callback_wait_p90,
        "callback_wait_mean_s": None if fig.callback_wait_mean is None else round(fig.callback_wait_mean, 1),
        "offered": fig.offered,
        "abandoned": fig.abandoned,
        "net_lost": fig.net_lost,
        "car_pct": None if fig.car is None else round(fig.car * 100, 2),
        "net_lost_rate_pct": None if fig.net_lost_rate is None else round(fig.net_lost_rate * 100, 2),
        "net_to_car": None if fig.net_to_car is None else round(fig.net_to_car, 3),
    }
    return out


def recovery_dict(rec: RecoveryReport) -> dict[str, Any]:
    return {
        "field_reach_share_by_try_pct": [round(v * 100, 1) for v in FIELD_REACH_SHARES],
        "rows": [{"by": by, "key": _key(k), **_recovery_dict(f)} for by, k, f in rec.rows],
        "total": _recovery_dict(rec.total),
    }


def write_recovery_csv(rec: RecoveryReport, out: TextIO, options: CsvOptions, tz: tzinfo) -> None:
    w = CsvWriter(out, options, tz)
    names = list(_recovery_dict(rec.total))
    flat = [n for n in names if not n.endswith("by_try") and not n.endswith("by_try_pct")]
    tries = [f"reached_try{i + 1}" for i in range(TRY_BUCKETS)]
    shares = [f"reached_try{i + 1}_pct" for i in range(TRY_BUCKETS)]
    w.row(["by", "key", *flat, *tries, *shares])
    for by, key, fig in [*rec.rows, ("total", "TOTAL", rec.total)]:
        d = _recovery_dict(fig)
        w.row([by, _key(key), *(d[n] for n in flat), *d["reach_by_try"], *d["reach_share_by_try_pct"]])


_RECOVERY_COLUMNS: tuple[tuple[str, Callable[[Recovery], str]], ...] = (
    ("Req", lambda f: str(f.requests)),
    ("CB", lambda f: str(f.reached_by_callback)),
    ("Own", lambda f: str(f.recovered_by_client)),
    ("Op", lambda f: str(f.recovered_by_operator)),
    ("Lost", lambda f: str(f.not_recovered)),
    ("Open", lambda f: str(f.open)),
    ("Try1..5+ %", lambda f: "/".join(_share(v) for v in f.reach_share_by_try)),
    ("First try", lambda f: _pair(f.first_attempt_median, f.first_attempt_p90)),
    ("CB wait", lambda f: _pair(f.callback_wait_median, f.callback_wait_p90)),
    ("CAR", lambda f: _pct(f.car)),
    ("Net", lambda f: _pct(f.net_lost_rate)),
    ("Net/CAR", lambda f: _num(f.net_to_car)),
)


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None and b is None else f"{_dur(a)}/{_dur(b)}"


RECOVERY_LEGEND = (
    "CB: reached by a callback; Own: the client called in again and was answered; Op: an operator\n"
    "dialled by hand; Lost: expired, failed or cancelled; Try %: share of those reached by callback\n"
    "per try; First try, CB wait (miss to the answered callback): median/p90; Net: net lost rate;\n"
    "Net/CAR: net lost rate / CAR"
)


def render_recovery(rec: RecoveryReport) -> str:
    header = ["group", *(h for h, _ in _RECOVERY_COLUMNS)]
    rows = [[f"{by} {k}", *(fmt(f) for _, fmt in _RECOVERY_COLUMNS)] for by, k, f in rec.rows]
    total = ["TOTAL", *(fmt(rec.total) for _, fmt in _RECOVERY_COLUMNS)]
    field_row = ["field data", *("" for _ in _RECOVERY_COLUMNS)]
    field_row[7] = "/".join(f"{v * 100:g}" for v in FIELD_REACH_SHARES)
    every = [header, *rows, total, field_row]
    widths = [max(len(r[i]) for r in every) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    return (
        "\n".join(
            [
                "Recovery (requests created in the period, status now; calls started in it)",
                line(header),
                rule,
                *(line(r) for r in rows),
                rule,
                line(total),
                line(field_row),
                RECOVERY_LEGEND,
            ]
        )
        + "\n"
    )


def write_recovery(rec: RecoveryReport, out: TextIO, fmt: str, options: CsvOptions, tz: tzinfo) -> None:
    if fmt == "csv":
        write_recovery_csv(rec, out, options, tz)
    elif fmt == "json":
        json.dump(recovery_dict(rec), out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        out.write(render_recovery(rec))
