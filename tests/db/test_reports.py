"""Reports, CSV exports, the CLI and scheduled files on real SQLite and PostgreSQL.

The dataset (times UTC; the report's zone is Moscow, UTC+3, and the period is 2 March there,
01 21:00Z to 02 21:00Z):

    call  start        queue    number  outcome                     wait  talk  agent  request
    L0    01 20:30     support  N1      queue_abandon (before)        30               r0 reached
    L1    01 21:30     support  N2      answered                       8   100  op1
    L2    02 06:00     support  N3      queue_abandon                 30               r1 reached (a1, a2)
    L3    02 07:00     sales    N4      queue_timeout                 50               r2 recovered by L6
    L4    02 08:00     support  N5      queue_abandon (short)          2
    L5    02 09:00     -        -       ivr_hangup                    40
    L6    03 08:00     sales    N4      answered (after)               5    60  op3
    L7    02 10:00     -        N6      answered (ring group)         25   200  op2
    L8    02 11:00     support  N7      queue_abandon                 15               r3 open
    web form 02 12:00                                                                  r4 cancelled
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import stat
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from apscheduler.triggers.cron import CronTrigger

from callbackd import cli
from callbackd.adapters import db, reports
from callbackd.adapters import models as m
from callbackd.adapters.reports import (
    CsvOptions,
    CsvWriter,
    ReportSettings,
    atomic_text,
    build_report,
    csv_out,
    queries,
)
from callbackd.adapters.scheduled import ReportScheduler
from callbackd.config import Config
from callbackd.domain.metrics import (
    AttemptRow,
    CallRow,
    Grouping,
    RequestRow,
    Thresholds,
    compute,
    mark_reached_later,
)
from callbackd.domain.periods import parse_bound

MSK = ZoneInfo("Europe/Moscow")
START = parse_bound("2026-03-02", MSK)
END = parse_bound("2026-03-03", MSK)
T = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
EVE = datetime(2026, 3, 1, 20, 30, tzinfo=UTC)  # 23:30 in Moscow
N1, N2, N3, N4, N5, N6, N7, N8 = (f"+1202555010{i}" for i in range(1, 9))
NAME = 'Smith; "J",\n Jr'  # the delimiters, a quote and a line break


def s(n: float) -> timedelta:
    return timedelta(seconds=n)


def call(lid, start, queue, number, *, hold=None, ring=None, talk=None, agent=None, reason=None, length=None):
    answered = start + s(ring) if ring is not None else None
    return m.Call(
        linkedid=lid,
        caller_num=(number or "anonymous")[-10:],
        number=number,
        caller_name=NAME if lid == "L1" else "",
        queue=queue,
        started_at=start,
        joined_at=start if queue else None,
        answered_at=answered,
        ended_at=answered + s(talk) if answered else start + s(length),
        hold_time=hold,
        agent=agent,
        outcome="answered" if answered else "missed",
        miss_reason=reason,
        node="n1",
    )


CALLS = [
    call("L0", EVE, "support", N1, hold=30, reason="queue_abandon", length=31),
    call("L1", EVE + s(3600), "support", N2, hold=8, ring=9, talk=100, agent="op1"),
    call("L2", T, "support", N3, hold=30, reason="queue_abandon", length=31),
    call("L3", T + s(3600), "sales", N4, reason="queue_timeout", length=50),
    call("L4", T + s(7200), "support", N5, hold=2, reason="queue_abandon", length=3),
    call("L5", T + s(3 * 3600), None, None, reason="ivr_hangup", length=40),
    call("L6", datetime(2026, 3, 3, 8, 0, tzinfo=UTC), "sales", N4, hold=5, ring=6, talk=60, agent="op3"),
    call("L7", T + s(4 * 3600), None, N6, ring=25, talk=200, agent="op2"),
    call("L8", T + s(5 * 3600), "support", N7, hold=15, reason="queue_abandon", length=16),
]  # fmt: skip
_AT = {c.linkedid: c.ended_at for c in CALLS}


def request(rid, number, created, status, sources, attempts_made=0, note=""):
    return m.Request(
        id=rid,
        number=number,
        name="",
        reason="queue_abandon",
        sources=sources,
        contact_count=len(sources),
        status=status,
        created_at=created,
        updated_at=created,
        attempts_made=attempts_made,
        operator_tries=0,
        note=note,
    )


REQUESTS = [
    request(10, N1, _AT["L0"], "reached", ["ami"], 1),
    request(11, N3, _AT["L2"], "reached", ["ami"], 2),
    request(12, N4, _AT["L3"], "recovered", ["ami", "http"]),
    request(13, N7, _AT["L8"], "open", ["ami"]),
    request(14, N8, T + s(6 * 3600), "cancelled", ["http"], note="call after 5, ask for =Ann"),
]
QUEUE_OF = {10: "support", 11: "support", 12: "sales", 13: "support"}  # via contact -> call


def contact(ref, source, at, request_id, disposition="schedule", number=None):
    return m.Contact(
        source=source,
        source_ref=ref,
        number=number,
        reason="queue_abandon" if source == "ami" else "web_form",
        at=at,
        disposition=disposition,
        request_id=request_id,
    )


CONTACTS = [
    contact("L0", "ami", _AT["L0"], 10),
    contact("L2", "ami", _AT["L2"], 11),
    contact("L3", "ami", _AT["L3"], 12),
    contact("form-1", "http", _AT["L3"] + s(60), 12),
    contact("L4", "ami", _AT["L4"], None, "short"),
    contact("L5", "ami", _AT["L5"], None, "anonymous"),
    contact("L8", "ami", _AT["L8"], 13),
    contact("form-2", "http", T + s(6 * 3600), 14),
]


def attempt(aid, req, at, operator, outcome):
    return m.Attempt(
        id=aid,
        request_id=req.id,
        try_no=1,
        operator=operator,
        channel_id=f"cbd-{aid}",
        number=req.number,
        status="done",
        outcome=outcome,
        counted=outcome != "operator_no_answer",
        started_at=at,
        ended_at=at + s(30),
        node="n1",
    )


R0, R1, R2, R3, R4 = REQUESTS
ATTEMPTS = [
    attempt("a0", R0, T + s(600), "op2", "answered"),  # in the period, for a request made before it
    attempt("a1", R1, T + s(300), "op1", "client_no_answer"),
    attempt("a2", R1, T + s(7200), "op2", "answered"),
    attempt("a3", R2, T + s(3900), "op1", "operator_no_answer"),
]


def fresh(row):
    """A new instance to insert: the templates above stay transient, so every test can insert them."""
    return type(row)(**{a.key: getattr(row, a.key) for a in sa.inspect(type(row)).column_attrs})


@pytest.fixture
async def engine(db_url):
    e = db.make_engine(db_url)
    await db.upgrade(e)
    async with db.sessionmaker(e)() as session, session.begin():
        for rows in (CALLS, REQUESTS, CONTACTS + ATTEMPTS):
            session.add_all([fresh(r) for r in rows])
            await session.flush()
    yield e
    await e.dispose()


def reference(by, thresholds=None):
    """The pure computation over the same rows, in memory."""
    status = {ct.source_ref: r.status for ct in CONTACTS for r in REQUESTS if ct.request_id == r.id}
    calls = [
        CallRow(
            c.started_at,
            c.queue,
            c.answered_at,
            c.hold_time,
            c.ended_at,
            c.outcome,
            c.miss_reason,
            c.agent,
            c.number,
            False,
            status.get(c.linkedid) if c.outcome == "missed" else None,
        )
        for c in CALLS
    ]
    reqs = [
        RequestRow(r.id, r.number, r.created_at, r.status, r.sources[0], r.attempts_made, QUEUE_OF.get(r.id))
        for r in REQUESTS
    ]
    atts = [AttemptRow(a.request_id, a.number, a.started_at, a.operator, a.outcome) for a in ATTEMPTS]
    return compute(calls, reqs, atts, start=START, end=END, by=by, tz=MSK, thresholds=thresholds)


async def test_totals(engine):
    fig = (await build_report(engine, START, END, by=None, tz=MSK, thresholds=Thresholds())).total
    assert (fig.offered, fig.handled, fig.abandoned, fig.short_abandoned) == (7, 2, 4, 1)  # L1..L8 but L6
    assert fig.car == pytest.approx(4 / 6)
    assert fig.net_lost == 2  # L5 anonymous, L8 never reached; L2 by a2, L3 by L6 the next day
    assert fig.net_lost_rate == pytest.approx(2 / 6)
    assert fig.lcr == pytest.approx(3 / 4)  # L2 L3 L8 / L1 L2 L3 L8
    assert fig.service_level == pytest.approx(1 / 6)  # L1 in 8 s; L7 took 25 s
    assert (fig.asa, fig.ata, fig.aht) == (16.5, 33.75, 150.0)  # (8+25)/2, (30+50+40+15)/4, (100+200)/2
    callbacks = (fig.requests, fig.attempted, fig.reached, fig.recovered, fig.open, fig.cancelled)
    assert callbacks == (4, 2, 1, 1, 1, 1)  # r1..r4; r0 was made the day before
    # Requests are made when the call ends: r1 at L2 + 31 s, first try a1 at +300 s -> 269 s;
    # r2 at L3 + 3650 s, a3 at +3900 s -> 250 s. Median (250 + 269) / 2, p90 the 2nd of 2.
    assert (fig.first_attempt_median, fig.first_attempt_p90) == (259.5, 269)
    assert (fig.reach_median, fig.reach_p90, fig.attempts_per_reached) == (7169, 7169, 2.0)  # a2: 7200 - 31


async def test_a_request_recovered_by_an_operators_call_is_not_lost(engine):
    # L8's request closes as recovered (an operator rang N7 by hand: nothing else is stored).
    async with db.sessionmaker(engine)() as session, session.begin():
        req = await session.get(m.Request, R3.id)
        req.status, req.close_reason, req.closed_at = "recovered", "operator_called", T + s(6 * 3600)
    fig = (await build_report(engine, START, END, by=None, tz=MSK, thresholds=Thresholds())).total
    assert (fig.abandoned, fig.net_lost, fig.recovered, fig.open) == (4, 1, 2, 0)  # only L5 is lost now


@pytest.mark.parametrize("by", [None, *Grouping])
async def test_every_grouping_matches_the_pure_computation(engine, by, monkeypatch):
    monkeypatch.setattr(queries, "BATCH", 3)  # requests and their attempts cross batch boundaries
    got = await build_report(engine, START, END, by=by, tz=MSK, thresholds=Thresholds())
    want = reference(by)
    assert got.rows == want.rows
    assert got.total == want.total
    if by is Grouping.QUEUE:
        assert [k for k, _ in got.rows] == ["sales", "support", "-"]
        assert dict(got.rows)["support"].requests == 2  # r1 from L2, r3 from L8
    if by is Grouping.HOUR:
        assert len(got.rows) == 24 and got.rows[0][0] == "2026-03-02T00:00+03:00"
        assert got.rows[0][1].offered == 1  # L1 at 00:30 Moscow time


async def test_thresholds_reach_the_queries(engine):
    t = Thresholds(short_abandon=s(1), service_level=s(30))
    got = await build_report(engine, START, END, by=None, tz=MSK, thresholds=t)
    assert got.total == reference(None, t).total
    assert (got.total.short_abandoned, got.total.service_level) == (0, pytest.approx(2 / 7))


@pytest.mark.parametrize(
    "closed", [{}, {11: "failed", 12: "expired"}], ids=["as-stored", "requests-unreached"]
)
async def test_reached_later_in_sql_matches_the_definition(engine, closed):
    """As stored, L2 and L3 are settled by their requests; with those requests closed unreached,
    the answered callback a2 (L2) and the later answered call L6 (L3) must be found instead."""
    if closed:
        async with db.sessionmaker(engine)() as session, session.begin():
            for rid, status in closed.items():
                (await session.get(m.Request, rid)).status = status
    async with engine.connect() as conn:
        got = {c.started_at: c async for b in reports.call_batches(conn, START, END) for c in b}
    status = {
        ct.source_ref: closed.get(r.id, r.status)
        for ct in CONTACTS
        for r in REQUESTS
        if ct.request_id == r.id
    }
    rows = [
        CallRow(c.started_at, None, c.answered_at, None, None, c.outcome, None, None, c.number)._replace(
            request_status=status.get(c.linkedid) if c.outcome == "missed" else None
        )
        for c in CALLS
    ]
    atts = [AttemptRow(a.request_id, a.number, a.started_at, a.operator, a.outcome) for a in ATTEMPTS]
    want = {c.started_at: c for c in mark_reached_later(rows, atts) if START <= c.started_at < END}
    assert {k: (c.reached_later, c.request_status) for k, c in got.items()} == {
        k: (c.reached_later, c.request_status) for k, c in want.items()
    }
    lost_calls = [T, T + s(3600), T + s(3 * 3600), T + s(5 * 3600)]  # L2 L3 L5 L8
    reached = [got[t].reached_later or got[t].request_status in ("reached", "recovered") for t in lost_calls]
    assert reached == [True, True, False, False]
    assert [got[t].reached_later for t in lost_calls[:2]] == ([True, True] if closed else [False, False])


async def export(engine, what, start, end, out, options, tz):
    """The CSV export as the command line runs it."""
    settings = ReportSettings(tz=tz, thresholds=Thresholds(), csv=options)
    return await reports.export(engine, what, start, end, out, settings, options)


def parse(text: str, delimiter: str = ",") -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))


async def test_export_streams_every_record_in_the_period(engine, monkeypatch):
    monkeypatch.setattr(queries, "BATCH", 2)  # several fetches, not one
    out = io.StringIO(newline="")
    assert await export(engine, "calls", START, END, out, CsvOptions(), MSK) == 7
    rows = parse(out.getvalue())
    assert rows[0] == [c.name for c in m.Call.__table__.c]
    assert [r[1] for r in rows[1:]] == ["L1", "L2", "L3", "L4", "L5", "L7", "L8"]
    for what, ids in (("requests", ["11", "12", "13", "14"]), ("attempts", ["a1", "a0", "a3", "a2"])):
        out = io.StringIO(newline="")
        await export(engine, what, START, END, out, CsvOptions(), MSK)
        assert [r[0] for r in parse(out.getvalue())[1:]] == ids


async def test_csv_for_excel_in_a_russian_locale(engine):
    out = io.StringIO(newline="")
    await export(engine, "calls", START, END, out, CsvOptions.excel_ru(), MSK)
    text = out.getvalue()
    assert text.startswith("\ufeffid;linkedid;")
    assert '"Smith; ""J"",\n Jr"' in text  # RFC 4180: quoted, quotes doubled, line break kept
    assert text.endswith("\r\n") and text.count("\r\n") == 8  # header + 7 records; the name's \n is data
    rows = parse(text.removeprefix("\ufeff"), ";")
    header, l1 = rows[0], dict(zip(rows[0], rows[1], strict=True))
    assert l1["caller_name"] == NAME
    assert l1["started_at"] == "2026-03-02T00:30:00+03:00"  # ISO 8601 with the offset
    assert l1["answered_at"] == "2026-03-02T00:30:09+03:00" and l1["joined_at"] == "2026-03-02T00:30:00+03:00"
    assert l1["number"] == "'" + N2  # a leading + would be read as a formula
    assert l1["hold_time"] == "8" and l1["miss_reason"] == "" and "outcome" in header
    report = await build_report(engine, START, END, by=Grouping.QUEUE, tz=MSK, thresholds=Thresholds())
    out = io.StringIO(newline="")
    reports.write_report_csv(report, out, CsvOptions.excel_ru(), MSK)
    rows = parse(out.getvalue().removeprefix("\ufeff"), ";")
    total = dict(zip(rows[0], rows[-1], strict=True))
    assert total["queue"] == "TOTAL" and total["car_pct"] == "66,67" and total["asa_s"] == "16,5"
    assert [r[0] for r in rows[1:-1]] == ["sales", "support", ""]  # no queue: an empty cell


async def test_requests_export_joins_sources_and_neutralises_notes(engine):
    out = io.StringIO(newline="")
    await export(engine, "requests", START, END, out, CsvOptions(), MSK)
    rows = parse(out.getvalue())
    r2, r4 = (dict(zip(rows[0], r, strict=True)) for r in (rows[2], rows[4]))
    assert r2["sources"] == "ami,http" and r2["status"] == "recovered"
    assert r4["note"] == "call after 5, ask for =Ann"  # = inside the text is harmless
    assert r4["created_at"] == "2026-03-02T15:00:00+03:00" and r4["closed_at"] == ""


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r"])
async def test_formula_cells_are_neutralised(engine, prefix):
    evil = f'{prefix}HYPERLINK("http://x";"y")'
    async with db.sessionmaker(engine)() as session, session.begin():
        session.add(
            m.Call(linkedid="evil", caller_name=evil, started_at=T, ended_at=T, outcome="missed", number=None)
        )
    out = io.StringIO(newline="")
    await export(engine, "calls", START, END, out, CsvOptions(), MSK)
    names = {r[1]: r[4] for r in parse(out.getvalue())[1:]}
    assert names["evil"] == "'" + evil
    buf = io.StringIO(newline="")
    w = CsvWriter(buf, CsvOptions(), MSK)
    w.row([evil, -5, -0.5, "safe", None])
    assert parse(buf.getvalue())[0] == ["'" + evil, "-5", "-0.5", "safe", ""]  # numbers stay numbers
    buf = io.StringIO(newline="")
    CsvWriter(buf, CsvOptions(neutralise=False), MSK).row([evil])
    assert parse(buf.getvalue())[0] == [evil]


# -- the command line ---------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path, db_url):
    path = tmp_path / "callbackd.toml"
    path.write_text(f'[database]\nurl = "{db_url}"\n\n[reports]\ntimezone = "Europe/Moscow"\n')
    path.chmod(0o600)  # a password in database.url is a secret
    return path


async def run_cli(*argv: str) -> int:
    """main() runs its own event loop, so it runs in a thread here."""
    return await asyncio.to_thread(cli.main, list(argv))


async def test_cli_report_in_every_format(engine, config_file, capsys):
    c = str(config_file)
    assert (
        await run_cli("-c", c, "report", "--from", "2026-03-02", "--to", "2026-03-03", "--format", "json")
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["from"] == "2026-03-02T00:00:00+03:00" and data["timezone"] == "Europe/Moscow"
    assert data["total"]["offered"] == 7 and data["total"]["car_pct"] == 66.67
    assert data["total"]["first_attempt_median_s"] == 259.5

    assert (
        await run_cli("-c", c, "report", "--from", "2026-03-02", "--to", "2026-03-03", "--by", "queue") == 0
    )
    table = capsys.readouterr().out
    assert "Calls" in table and "Callbacks" in table
    assert [ln.split()[:2] for ln in table.splitlines() if ln.startswith(("support ", "TOTAL "))] == [
        ["support", "4"],  # L1 L2 L4 L8
        ["TOTAL", "7"],
        ["support", "2"],
        ["TOTAL", "4"],
    ]
    assert max(len(ln) for ln in table.splitlines()) <= 110

    argv = ["-c", c, "report", "--from", "2026-03-02T00:00+03:00", "--format", "csv", "--by", "day", "--bom"]
    assert await run_cli(*argv, "--to", "2026-03-03T00:00:00+03:00") == 0
    rows = parse(capsys.readouterr().out.removeprefix("\ufeff"))
    assert [r[:2] for r in rows] == [["day", "offered"], ["2026-03-02", "7"], ["TOTAL", "7"]]


async def test_cli_export_to_a_file(engine, config_file, tmp_path, capsys):
    (tmp_path / "out").mkdir()  # the CLI never creates the directory
    target = tmp_path / "out" / "calls.csv"
    argv = ["-c", str(config_file), "export", "calls", "--from", "2026-03-02", "--to", "2026-03-03"]
    assert await run_cli(*argv, "--output", str(target), "--excel-ru") == 0
    assert "7 calls written" in capsys.readouterr().err
    text = target.read_text(encoding="utf-8")
    assert text.startswith("\ufeffid;") and len(parse(text, ";")) == 8
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert await run_cli(*argv[:-4], "--from", "2026-03-01", "--to", "2026-03-02", "--delimiter", "tab") == 0
    rows = parse(capsys.readouterr().out, "\t")
    assert [r[1] for r in rows[1:]] == ["L0"]  # 23:30 Moscow time on 1 March


async def test_cli_rejects_bad_periods(config_file, capsys):
    c = str(config_file)
    assert await run_cli("-c", c, "report", "--from", "2026-03-32") == 2
    assert "--from '2026-03-32'" in capsys.readouterr().err
    assert await run_cli("-c", c, "export", "calls", "--from", "2026-03-02", "--to", "2026-03-02") == 2
    assert "exclusive" in capsys.readouterr().err


# -- scheduled files ------------------------------------------------------------------------


def scheduled_config(db_url, directory, **job):
    return Config.model_validate(
        {
            "database": {"url": db_url},
            "reports": {
                "timezone": "Europe/Moscow",
                "schedule": [{"cron": "5 0 * * *", "directory": str(directory), **job}],
            },
        }
    )


def test_scheduler_holds_one_cron_job_in_the_report_time_zone(tmp_path):
    sched = ReportScheduler(scheduled_config("sqlite+aiosqlite:///x.db", tmp_path))
    [job] = sched.scheduler.get_jobs()
    assert isinstance(job.trigger, CronTrigger) and str(job.trigger.timezone) == "Europe/Moscow"
    after = datetime(2026, 3, 2, 12, 0, tzinfo=MSK)
    assert job.trigger.get_next_fire_time(None, after) == datetime(2026, 3, 3, 0, 5, tzinfo=MSK)
    assert not ReportScheduler(Config()).scheduler.get_jobs()


async def test_scheduled_report_is_written_atomically(engine, db_url, tmp_path):
    cfg = scheduled_config(db_url, tmp_path / "reports", by="queue")
    sched = ReportScheduler(cfg)
    path = await sched.fire(cfg.reports.schedule[0], now=datetime(2026, 3, 3, 0, 5, tzinfo=MSK))
    assert path == tmp_path / "reports" / "report-2026-03-02.csv"
    rows = parse(path.read_text(encoding="utf-8"))
    assert rows[0][:2] == ["queue", "offered"] and rows[-1][:2] == ["TOTAL", "7"]
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    cfg = scheduled_config(db_url, tmp_path / "x", what="attempts", period="last_7_days")
    path = await ReportScheduler(cfg).fire(
        cfg.reports.schedule[0], now=datetime(2026, 3, 3, 0, 5, tzinfo=MSK)
    )
    assert path is not None and path.name == "attempts-2026-02-24_2026-03-02.csv"
    assert len(parse(path.read_text(encoding="utf-8"))) == 1 + 4
    for what in ("report", "calls"):
        cfg = scheduled_config(db_url, tmp_path / "xlsx", what=what, format="xlsx")
        cfg = cfg.model_copy(update={"reports": cfg.reports.model_copy(update={"language": "ru"})})
        path = await ReportScheduler(cfg).fire(
            cfg.reports.schedule[0], now=datetime(2026, 3, 3, 0, 5, tzinfo=MSK)
        )
        assert path is not None and path.name == f"{what}-2026-03-02.xlsx"
        sheet = read_book(path.read_bytes())["Отчёт" if what == "report" else "Звонки"]
        assert len(list(sheet.iter_rows())) == (3 if what == "report" else 8)  # header, day, total / 7 calls


async def test_a_failing_scheduled_job_is_logged_not_raised(engine, db_url, tmp_path):
    (tmp_path / "file").write_text("")
    cfg = scheduled_config(db_url, tmp_path / "file" / "sub")
    assert await ReportScheduler(cfg).fire(cfg.reports.schedule[0]) is None


async def test_the_scheduler_runs_the_job_when_due(engine, db_url, tmp_path):
    cfg = scheduled_config(db_url, tmp_path, what="calls", period="today")
    sched = ReportScheduler(cfg)
    sched.start()
    try:
        sched.scheduler.modify_job("reports.schedule.0", next_run_time=datetime.now(MSK))
        for _ in range(200):
            if list(tmp_path.glob("calls-*.csv")):
                break
            await asyncio.sleep(0.05)
    finally:
        sched.shutdown()
    [path] = tmp_path.glob("calls-*.csv")
    assert path.name == f"calls-{datetime.now(MSK).date().isoformat()}.csv"


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_text(target) as f:
        f.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.csv"]


def test_report_config_is_validated(tmp_path):
    from callbackd.config import ConfigError, load

    def problems(toml: str) -> str:
        p = tmp_path / "c.toml"
        p.write_text(toml)
        with pytest.raises(ConfigError) as exc:
            load(p)
        return str(exc.value)

    text = problems('[[reports.schedule]]\ncron = "5 0 * *"\n')
    assert "reports.schedule.0.cron: Wrong number of fields" in text
    text = problems('[[reports.schedule]]\ncron = "5 0 * * *"\nwhat = "calls"\nformat = "json"\n')
    assert "reports.schedule.0: calls exports are CSV or xlsx only" in text
    text = problems('[reports]\ntimezone = "Mars/Olympus"\nservice_level = "soon"\n')
    assert "reports.timezone: unknown time zone" in text and "reports.service_level" in text
    assert "csv_delimiter and csv_decimal" in problems('[reports]\ncsv_decimal = ","\n')


@pytest.mark.parametrize(
    "zone", ["Europe/Berlin", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe"]
)
def test_cached_local_times_match_astimezone_across_dst(zone):
    tz = ZoneInfo(zone)
    fmt = reports.LocalTimes(tz)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    while at.year == 2026:  # every 7 min 13.25 s of a year: both DST changes, odd seconds and fractions
        text = at.strftime("%Y-%m-%d %H:%M:%S.%f")
        assert fmt(text) == at.astimezone(tz).isoformat(timespec="seconds"), text
        at += timedelta(seconds=433.25)
    assert fmt(None) == ""


def test_cached_local_times_of_a_batch_match_one_by_one():
    fmt, one = reports.LocalTimes(ZoneInfo("Europe/Berlin")), reports.LocalTimes(ZoneInfo("Europe/Berlin"))
    texts = [
        None,
        "2026-03-29 00:59:59.000000",
        "2026-03-29 01:00:00.250000",
        None,
        "2026-10-25 00:30:00.000000",
    ]
    assert fmt.column(texts * 2) == [one(t) for t in texts * 2]


@pytest.mark.parametrize("options", [CsvOptions(), CsvOptions.excel_ru()], ids=["comma", "excel-ru"])
def test_rows_written_column_by_column_are_what_csv_writer_writes(options):
    """The joined lines when no field needs quoting, csv.writer itself when one does."""
    clean = [(1, 2, None), ("a", "", "b c"), ("2026-03-01T00:00:00+00:00", "x", "y"), (1.5, True, None)]
    tricky = [*clean[:3], ("a,b", 'say "hi"', "two\nlines"), ("x;y", "\r", "1,5")]
    for columns in (clean, tricky, clean[:1], [("",), ("",)], [(), ()]):
        want, got = io.StringIO(), io.StringIO()
        csv_out.CsvWriter(want, options, UTC).raw_rows(zip(*columns, strict=True))
        csv_out.CsvWriter(got, options, UTC).raw_columns(
            [list(c) if i % 2 else c for i, c in enumerate(columns)]
        )
        assert got.getvalue() == want.getvalue()


def test_documented_report_settings_are_valid():
    """The README's [reports] example and the commented one in config/callbackd.toml."""
    import re
    import tomllib

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Reports") :]
    snippet = section[section.index("```toml") + 7 : section.index("```", section.index("```toml") + 7)]
    cfg = Config.model_validate(tomllib.loads(snippet))
    assert cfg.reports.csv_delimiter == ";" and cfg.reports.schedule[0].cron == "5 0 * * *"
    example = (root / "config" / "callbackd.toml").read_text()
    block = example[example.index("# [reports]") :].split("\n\n", 1)[0]
    cfg = Config.model_validate(
        tomllib.loads("\n".join(re.sub(r"^# ?", "", ln) for ln in block.splitlines()))
    )
    assert cfg.reports.schedule[0].directory == Path("/var/lib/callbackd/reports")


def test_column_check_neutralises_exactly_the_cells_a_spreadsheet_would_run():
    clean = ("ok", None, "", "a=b")
    assert csv_out._neutralise_column(clean) is clean  # nothing to do: the batch is passed through
    mixed = ("ok", "=1+1", None, "note\n=line two", "+12025550100", "-", "plain")
    assert list(csv_out._neutralise_column(mixed)) == [
        "ok",
        "'=1+1",
        None,
        "note\n=line two",  # a later line starting with = is not a formula: only the cell's start counts
        "'+12025550100",
        "'-",
        "plain",
    ]


def test_gc_pause_nests_and_restores_the_collectors_state():
    import gc

    assert gc.isenabled()
    with queries.gc_paused():
        with queries.gc_paused():  # a second pass (another scheduled job) inside the first
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with queries.gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


# -- spreadsheets ----------------------------------------------------------------------------


def read_book(data: bytes):
    import openpyxl

    return openpyxl.load_workbook(io.BytesIO(data))


def by_header(ws) -> list[dict[str, object]]:
    """Each data row as {header: cell}, cells kept so their types can be checked."""
    rows = list(ws.iter_rows())
    header = [c.value for c in rows[0]]
    return [dict(zip(header, r, strict=True)) for r in rows[1:]]


async def test_xlsx_export_has_typed_cells_and_keeps_numbers_as_written(engine):
    """Times are date-time cells in the report zone; caller IDs, DIDs and Linkedids are text as stored."""
    evil = '=HYPERLINK("http://x";"y")'
    async with db.sessionmaker(engine)() as session, session.begin():
        for lid, num, did, name in (
            ("1700000000.10", "0049301234567", "0074951234567", evil),
            ("1700000000.1", "00123", "007", "bell\x07 and\x1b esc"),
            ("1700000000.100", "+79161234567", "84951234567", "-1"),
        ):
            session.add(
                m.Call(linkedid=lid, caller_num=num, did=did, caller_name=name, number=None,
                       started_at=T + s(60), ended_at=T + s(90), outcome="missed", hold_time=30)
            )  # fmt: skip
    out = io.BytesIO()
    settings = ReportSettings(tz=MSK, thresholds=Thresholds(), csv=CsvOptions(), language="en")
    assert await reports.export(engine, "calls", START, END, out, settings, CsvOptions(), fmt="xlsx") == 10
    book = read_book(out.getvalue())
    assert book.sheetnames == ["Calls"]
    rows = by_header(book["Calls"])
    first = rows[0]
    assert list(first)[:4] == ["Call ID", "Linkedid", "Caller ID", "Number"]
    started = first["Started"]
    assert started.is_date and started.value == datetime(2026, 3, 2, 0, 30)  # Moscow wall clock
    assert first["Answered"].value == datetime(2026, 3, 2, 0, 30, 9)
    assert first["Why missed"].value is None
    assert first["Wait, s"].data_type == "n" and first["Wait, s"].value == 8
    assert first["Caller name"].value == NAME  # delimiters, quotes, a line break: all kept
    number = first["Number"]
    assert number.data_type == "s" and number.value == N2 and number.number_format == "@"
    lids = {r["Linkedid"].value: r for r in rows}
    assert {"1700000000.10", "1700000000.1", "1700000000.100"} <= set(lids)  # three calls, not one
    ten = lids["1700000000.10"]
    assert ten["Linkedid"].data_type == "s"
    assert ten["Caller ID"].value == "0049301234567" and ten["DID"].value == "0074951234567"
    assert ten["Caller name"].value == evil and ten["Caller name"].data_type == "s"  # text, not a formula
    assert lids["1700000000.1"]["DID"].value == "007"
    assert lids["1700000000.1"]["Caller name"].value == "bell and esc"  # XML cannot hold them
    assert (
        lids["1700000000.100"]["Caller name"].value == "-1"
        and lids["1700000000.100"]["Caller name"].data_type == "s"
    )
    assert not any(
        isinstance(c.value, str) and c.value.startswith("'") for r in rows for c in r.values()
    )  # no apostrophes anywhere


async def test_xlsx_exports_of_requests_and_attempts_in_russian(engine):
    settings = ReportSettings(tz=MSK, thresholds=Thresholds(), csv=CsvOptions(), language="ru")
    out = io.BytesIO()
    await reports.export(engine, "requests", START, END, out, settings, CsvOptions(), fmt="xlsx")
    rows = by_header(read_book(out.getvalue())["Заявки"])
    assert [r["Заявка"].value for r in rows] == [11, 12, 13, 14]
    r12 = rows[1]
    assert r12["Источники"].value == "ami,http" and r12["Статус"].value == "recovered"
    assert r12["Создана"].value == _AT["L3"].astimezone(MSK).replace(tzinfo=None)
    assert rows[3]["Заметка"].value == "call after 5, ask for =Ann" and rows[3]["Закрыта"].value is None
    out = io.BytesIO()
    await reports.export(engine, "attempts", START, END, out, settings, CsvOptions(), fmt="xlsx")
    rows = by_header(read_book(out.getvalue())["Попытки"])
    assert [r["ID попытки"].value for r in rows] == ["a1", "a0", "a3", "a2"]
    assert rows[0]["Засчитана"].value is True and rows[2]["Засчитана"].value is False


async def test_xlsx_report_figures_are_numbers_with_formats(engine):
    report = await build_report(engine, START, END, by=Grouping.QUEUE, tz=MSK, thresholds=Thresholds())
    settings = ReportSettings(tz=MSK, thresholds=Thresholds(), csv=CsvOptions(), language="en")
    out = io.BytesIO()
    reports.write_report(report, out, "xlsx", settings, CsvOptions())
    book = read_book(out.getvalue())
    assert book.sheetnames == ["Report", "Period"]
    rows = by_header(book["Report"])
    assert [r["Queue"].value for r in rows] == ["sales", "support", None, "Total"]
    total = rows[-1]
    car = total["Abandon rate (CAR)"]
    assert (
        car.data_type == "n" and car.value == pytest.approx(report.total.car) and car.number_format == "0.0%"
    )
    assert total["Offered"].value == 7 and total["Net lost rate"].value == pytest.approx(
        report.total.net_lost_rate
    )
    asa = total["Mean wait to answer (ASA), s"]
    assert asa.value == pytest.approx(16.5) and asa.number_format == "0.0"
    period = [[c.value for c in r] for r in book["Period"].iter_rows(min_row=2)]
    assert period[0] == ["From", datetime(2026, 3, 2, 0, 0)] and period[2] == ["Time zone", "Europe/Moscow"]

    for by, key in ((Grouping.DAY, date(2026, 3, 2)), (Grouping.HOUR, datetime(2026, 3, 2, 0, 0))):
        report = await build_report(engine, START, END, by=by, tz=MSK, thresholds=Thresholds())
        out = io.BytesIO()
        reports.write_report(report, out, "xlsx", replace(settings, language="ru"), CsvOptions())
        rows = by_header(read_book(out.getvalue())["Отчёт"])
        first = rows[0]["День" if by is Grouping.DAY else "Час"]
        assert first.is_date and first.value == (key if by is Grouping.HOUR else datetime(2026, 3, 2))
        assert rows[0]["Поступило"].value == (7 if by is Grouping.DAY else 1)
        assert rows[-1]["День" if by is Grouping.DAY else "Час"].value == "Итого"


def test_every_export_column_and_figure_has_a_header_in_both_languages():
    from callbackd.adapters.reports import columns
    from callbackd.domain.metrics import FIGURE_NAMES

    for language in columns.LANGUAGES:
        for what in queries.EXPORTS:
            headers = [columns.export_header(what, c.name, language) for c in queries.export_columns(what)]
            assert len(set(headers)) == len(headers), (what, language)  # no two columns look alike
        assert len({columns.figure_header(n, language) for n in FIGURE_NAMES}) == len(FIGURE_NAMES)


async def test_cli_writes_spreadsheets(engine, config_file, tmp_path, capsys):
    c = str(config_file)
    target = tmp_path / "calls.xlsx"
    argv = ["-c", c, "export", "calls", "--from", "2026-03-02", "--to", "2026-03-03", "--format", "xlsx"]
    assert await run_cli(*argv, "--lang", "ru", "--output", str(target)) == 0
    assert "7 calls written" in capsys.readouterr().err
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    rows = by_header(read_book(target.read_bytes())["Звонки"])
    assert [r["Linkedid"].value for r in rows] == ["L1", "L2", "L3", "L4", "L5", "L7", "L8"]
    report = tmp_path / "report.xlsx"
    argv = [
        "-c",
        c,
        "report",
        "--from",
        "2026-03-02",
        "--to",
        "2026-03-03",
        "--by",
        "day",
        "--format",
        "xlsx",
    ]
    assert await run_cli(*argv, "-o", str(report)) == 0
    rows = by_header(read_book(report.read_bytes())["Report"])
    assert rows[0]["Day"].value == datetime(2026, 3, 2) and rows[0]["Offered"].value == 7


def test_atomic_binary_write_and_the_status_file_share_one_helper(tmp_path):
    from callbackd.adapters import files, status

    target = tmp_path / "r.xlsx"
    with files.atomic_write(target, binary=True) as f:
        f.write(b"PK\x03\x04")
    assert target.read_bytes() == b"PK\x03\x04" and stat.S_IMODE(target.stat().st_mode) == 0o640
    with pytest.raises(RuntimeError), files.atomic_write(target, binary=True) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"PK\x03\x04" and os.listdir(tmp_path) == ["r.xlsx"]
    status.write(tmp_path / "status.json", {"pid": 1})
    assert stat.S_IMODE((tmp_path / "status.json").stat().st_mode) == 0o640
