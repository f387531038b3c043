"""``callbackd simulate``: a stored period read from the database, fitted and replayed.

Wiring only: the model is :mod:`callbackd.domain.simulation`, the rows come from
:mod:`callbackd.adapters.simdata`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from callbackd.config import Config, _duration
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.errors import DomainError
from callbackd.domain.ladder import RetryLadder, Schedule

FIGURES = (
    "car",
    "net_lost_rate",
    "callbacks_per_hour",
    "occupancy",
    "first_attempt_median",
    "reached_by_callback",
    "recovered_by_call",
)


def hours_spec(text: str) -> dict[str, list[str]]:
    """``mon-fri=09:00-13:00,14:00-18:00;sat=10:00-14:00`` -> the config's ``schedule.hours`` form."""
    spec: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        days, sep, spans = part.partition("=")
        if not sep:
            raise ValueError(f"--hours {part!r}: use DAYS=HH:MM-HH:MM[,HH:MM-HH:MM]")
        spec[days.strip()] = [s.strip() for s in spans.split(",") if s.strip()]
    return spec


def break_spans(text: str) -> list[tuple[time, time]]:
    """``12:00-12:30,15:00-15:15`` (seconds allowed) -> spans; each is one operator away, daily."""
    spans = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, sep, b = part.partition("-")
        try:
            if not sep:
                raise ValueError
            spans.append((time.fromisoformat(a.strip()), time.fromisoformat(b.strip())))
        except ValueError:
            raise ValueError(f"--breaks {part!r}: use HH:MM[:SS]-HH:MM[:SS][,...]") from None
    return spans


@dataclass(frozen=True)
class Changes:
    """The what-if: anything left None keeps the stored period's setting."""

    operators: int | None = None
    schedule: Schedule | None = None
    client_window: BusinessCalendar | None = None
    dialer: bool = True

    @property
    def any(self) -> bool:
        return self != Changes()

    @classmethod
    def parse(
        cls,
        cfg: Config,
        *,
        operators: int | None = None,
        delays: str | None = None,
        max_attempts: int | None = None,
        hours: str | None = None,
        client_window: str | None = None,
        dialer: bool = True,
    ) -> Changes:
        """From the command line's text; raises ValueError with the message to show."""
        if operators is not None and operators < 1:
            raise ValueError("--operators must be at least 1")
        base = cfg.schedule_rules()
        schedule = None
        tz = cfg.schedule.timezone
        try:
            if delays or max_attempts:
                ladder = base.ladder
                steps = ladder.delays
                if delays:
                    steps = tuple(_duration(d.strip()) for d in delays.split(","))
                    if not all(hasattr(d, "total_seconds") for d in steps):
                        raise ValueError(f"--delays {delays!r}: use durations such as 1h,3h,6h")
                ladder = RetryLadder(delays=steps, max_attempts=max_attempts or ladder.max_attempts)
                schedule = replace(base, ladder=ladder)
            if hours:
                calendar = BusinessCalendar.from_spec(tz, hours_spec(hours), cfg.schedule.holidays)
                schedule = replace(schedule or base, calendar=calendar)
            window = None
            if client_window:
                window = BusinessCalendar.from_spec(tz, {"mon-sun": client_window.split(",")})
        except DomainError as exc:
            raise ValueError(str(exc)) from None
        return cls(operators=operators, schedule=schedule, client_window=window, dialer=dialer)


async def run(
    cfg: Config,
    start: datetime,
    end: datetime,
    changes: Changes,
    *,
    runs: int,
    seed: int,
    now: datetime | None = None,
    breaks: Sequence[tuple[time, time]] = (),
    per_client: bool = True,
) -> dict:
    """*now*: when the figures are read (default: the present), as the report reads the database.
    *breaks*: the period's rota (daily spans in the schedule's time zone, one operator away each),
    applied to every scenario: the database records who answered, not who was on duty.
    *per_client*: replay each client's stored tries as they went and draw only the tries the
    period did not make (``--reach clients``); False draws every try from the per-try reach."""
    from callbackd.adapters import db, reports, simdata
    from callbackd.domain import simulation as sim

    settings = reports.ReportSettings.from_config(cfg)
    engine = db.make_engine(cfg.database.url, read_only=True)
    try:
        period = await simdata.load_period(engine, start, end)
        measured = await reports.build_report(
            engine, start, end, by=None, tz=settings.tz, thresholds=settings.thresholds
        )
    finally:
        await engine.dispose()
    behaviour = sim.fit(period.calls, period.attempts, per_client=per_client)
    calls = sim.to_sim_calls(period.calls, start)
    base = cfg.schedule_rules()
    period_max = (end - start + base.max_age).total_seconds()
    stored = sim.Scenario(
        operators=period.operators,
        schedule=base,
        epoch=start,
        period=(end - start).total_seconds(),
        short_abandon=settings.thresholds.short_abandon.total_seconds(),
        horizon=min(((now or datetime.now(UTC)) - start).total_seconds(), period_max),
        breaks=sim.daily_breaks(
            breaks, ZoneInfo(cfg.schedule.timezone), start, (end - start).total_seconds()
        ),
    )
    scenarios = [("as stored", stored), ("dialer off", replace(stored, dialer=False))]
    if changes.any:
        what_if = replace(
            stored,
            operators=changes.operators or stored.operators,
            schedule=changes.schedule or stored.schedule,
            client_window=changes.client_window,
            dialer=changes.dialer,
        )
        scenarios.append(("what-if", what_if))
    out: dict[str, Any] = {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "offered": len(calls),
        "leads": len(period.leads),
        "measured": {"car": measured.total.car, "net_lost_rate": measured.total.net_lost_rate},
        "fitted": {
            "operators": period.operators,
            "breaks": [f"{a.isoformat()}-{b.isoformat()}" for a, b in breaks],
            "mean_patience_s": 1 / behaviour.abandon_rate,
            "reach_by_try": list(behaviour.reach),
            "reach": "clients" if per_client else "fitted",
            "clients_replayed": len(behaviour.clients),
            "talk_mean_s": sum(behaviour.talk) / len(behaviour.talk),
            "unanswered_try_s": behaviour.miss_busy,
        },
        "runs": runs,
        "seed": seed,
        "scenarios": {},
    }
    for name, scenario in scenarios:
        p = sim.predict(calls, period.leads, behaviour, scenario, runs=runs, seed=seed)
        out["scenarios"][name] = {
            "operators": scenario.operators,
            "dialer": scenario.dialer,
            **{k: vars(getattr(p, k)) for k in FIGURES},
        }
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


_FORMAT = {"car": _pct, "net_lost_rate": _pct, "occupancy": _pct}
_LABEL = {
    "car": "CAR",
    "net_lost_rate": "net lost rate",
    "callbacks_per_hour": "callbacks per open hour",
    "occupancy": "operator occupancy",
    "first_attempt_median": "first try, median (s)",
    "reached_by_callback": "reached by callback",
    "recovered_by_call": "recovered by own call",
}


def render(out: dict[str, Any]) -> str:
    fitted = out["fitted"]
    reach = "/".join(f"{r * 100:.0f}" for r in fitted["reach_by_try"])
    lines = [
        f"callbackd simulate {out['from']} to {out['to']}",
        f"stored: {out['offered']} offered calls, {out['leads']} web leads; measured CAR "
        f"{_pct(out['measured']['car'])}, net lost rate {_pct(out['measured']['net_lost_rate'])}",
        f"fitted: {fitted['operators']} operators, mean patience {fitted['mean_patience_s']:.0f}s, "
        f"reach by try {reach} %, talk {fitted['talk_mean_s']:.0f}s, unanswered try "
        f"{fitted['unanswered_try_s']:.0f}s",
        f"reach: {fitted['clients_replayed']} clients' stored tries replayed as they went, later tries drawn"
        if fitted["reach"] == "clients"
        else "reach: every try drawn from the reach by try",
        f"predicted over {out['runs']} runs (seeds from {out['seed']}): mean [5th - 95th percentile]",
    ]
    for name, s in out["scenarios"].items():
        lines.append(f"  {name}: {s['operators']} operators, dialer {'on' if s['dialer'] else 'off'}")
        for k in FIGURES:
            f = _FORMAT.get(k, _num)
            band = s[k]
            lines.append(f"    {_LABEL[k]:<24} {f(band['mean']):>8}  [{f(band['low'])} - {f(band['high'])}]")
    return "\n".join(lines) + "\n"
