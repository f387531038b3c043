"""Recovery analytics and ASA on real SQLite and PostgreSQL, against the pure computation.

call       start  queue    number  outcome                 wait  request
L1            0   support  N1      answered                  10
L2          100   support  N2      queue_abandon             40   r1 reached on try 2
L3          200   sales    N3      queue_abandon             20   r2 recovered: N3 called in again (L4)
L4         1000   sales    N3      answered                   6
cbd-a2     7300   -        N2      answered (a callback leg stored by an older detector: not a call)
web lead   3000                                                   r3 reached on try 1
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from callbackd.adapters import db, reports
from callbackd.adapters import models as m
from callbackd.adapters.reports import queries
from callbackd.domain.analytics import RecoveryRow, TryRow, compute_recovery
from callbackd.domain.metrics import CallRow, Thresholds, mark_reached_later

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
START, END = T0 - timedelta(hours=1), T0 + timedelta(days=1)
N1, N2, N3, N4 = (f"+1202555020{i}" for i in range(1, 5))


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def call(lid, start, queue, number, hold, answered):
    return m.Call(
        linkedid=lid,
        number=number,
        queue=queue,
        started_at=t(start),
        answered_at=t(start + hold) if answered else None,
        ended_at=t(start + hold + (60 if answered else 0)),
        hold_time=hold if queue else None,
        agent="op1" if answered else None,
        outcome="answered" if answered else "missed",
        miss_reason=None if answered else "queue_abandon",
    )


def request(rid, number, created, status, source, close=None, made=0):
    return m.Request(
        id=rid,
        number=number,
        reason="queue_abandon",
        sources=[source],
        status=status,
        created_at=t(created),
        updated_at=t(created),
        attempts_made=made,
        close_reason=close,
    )


def contact(ref, source, at, rid):
    return m.Contact(
        source=source,
        source_ref=ref,
        number=None,
        reason="x",
        at=t(at),
        disposition="schedule",
        request_id=rid,
    )


def attempt(aid, rid, number, at, try_no, outcome):
    return m.Attempt(
        id=aid,
        request_id=rid,
        try_no=try_no,
        operator="PJSIP/op1",
        channel_id=f"cbd-{aid}",
        number=number,
        status="done",
        outcome=outcome,
        counted=True,
        started_at=t(at),
    )


def rows() -> list[list]:
    """New instances per test: inserted ORM objects cannot be inserted again."""
    return [
        [
            call("L1", 0, "support", N1, 10, True),
            call("L2", 100, "support", N2, 40, False),
            call("L3", 200, "sales", N3, 20, False),
            call("L4", 1000, "sales", N3, 6, True),
            # What an older detector stored for a callback with detection.inbound_contexts empty: the
            # operator's leg, answered after the operator's ring, the whisper and the client's ring.
            call("cbd-a2", 7300, None, N2, 25, True),
        ],
        [
            request(1, N2, 140, "reached", "ami", "reached", 2),
            request(2, N3, 220, "recovered", "ami", "client_called_in"),
            request(3, N4, 3000, "reached", "http", "reached", 1),
        ],
        [
            contact("L2", "ami", 140, 1),
            contact("L3", "ami", 220, 2),
            contact("lead-1", "http", 3000, 3),
            attempt("a1", 1, N2, 200, 1, "client_no_answer"),
            attempt("a2", 1, N2, 7300, 2, "answered"),
            attempt("a3", 3, N4, 3060, 1, "answered"),
        ],
    ]


@pytest.fixture
async def engine(db_url):
    e = db.make_engine(db_url)
    await db.upgrade(e)
    async with db.sessionmaker(e)() as session, session.begin():
        for part in rows():
            session.add_all(part)
            await session.flush()
    yield e
    await e.dispose()


async def test_callback_legs_stay_out_of_asa_and_the_offered_calls(engine):
    """Regression: a stored callback leg counted as an answered call, its 25 s wait inside ASA."""
    fig = (await reports.build_report(engine, START, END, by=None, tz=UTC, thresholds=Thresholds())).total
    assert (fig.offered, fig.handled, fig.abandoned) == (4, 2, 2)
    assert fig.asa == 8.0  # (10 + 6) / 2: L1 and L4 only
    # The callback's own wait is its own figure: r1 made at 140, a2 answered at 7300.
    rec = await reports.build_recovery(engine, START, END, thresholds=Thresholds())
    assert rec.total.offered == 4
    # r1: 7300 - 140 = 7160 s; r3, the lead: 3060 - 3000 = 60 s
    assert (rec.total.callback_wait_median, rec.total.callback_wait_mean) == (3610, 3610)


async def test_recovery_matches_the_pure_computation(engine, monkeypatch):
    monkeypatch.setattr(queries, "BATCH", 2)  # requests and their attempts cross batches
    got = await reports.build_recovery(engine, START, END, thresholds=Thresholds())
    calls = mark_reached_later(
        [
            CallRow(c.started_at, c.queue, c.answered_at, c.hold_time, c.ended_at, c.outcome, c.miss_reason,
                    c.agent, c.number, False, {"L2": "reached", "L3": "recovered"}.get(c.linkedid))
            for c in rows()[0] if not c.linkedid.startswith("cbd-")
        ],
        [],
    )  # fmt: skip
    tries = {
        1: (TryRow(t(200), 1, "client_no_answer"), TryRow(t(7300), 2, "answered")),
        3: (TryRow(t(3060), 1, "answered"),),
    }
    queues = {1: "support", 2: "sales"}
    reqs = [
        RecoveryRow(
            r.id, r.created_at, r.status, r.close_reason, r.sources[0], queues.get(r.id), tries.get(r.id, ())
        )
        for r in rows()[1]
    ]
    want = compute_recovery(calls, reqs)
    assert got == want
    by = {(b, k): f for b, k, f in got.rows}
    assert by[("queue", "support")].reach_by_try == (0, 1, 0, 0, 0)
    assert by[("source", "web")].reach_by_try == (1, 0, 0, 0, 0)
    assert by[("queue", "sales")].recovered_by_client == 1
    assert (got.total.net_lost, got.total.car) == (0, 0.5)  # L2 and L3 of 4, both brought back


async def test_cli_recovery_in_every_format(engine, db_url, tmp_path, capsys):
    import asyncio

    from callbackd import cli

    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(f'[database]\nurl = "{db_url}"\n\n[reports]\ntimezone = "UTC"\n')
    cfg.chmod(0o600)
    base = ["-c", str(cfg), "report", "--from", "2026-03-02", "--to", "2026-03-03", "--recovery"]
    assert await asyncio.to_thread(cli.main, [*base, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["field_reach_share_by_try_pct"] == [80.5, 12.0, 4.5, 2.0, 1.0]
    assert data["total"]["reach_by_try"] == [1, 1, 0, 0, 0]
    assert data["total"]["reached_by_callback"] == 2 and data["total"]["recovered_by_client"] == 1
    assert await asyncio.to_thread(cli.main, base) == 0
    table = capsys.readouterr().out
    assert "Recovery" in table and "field data" in table and "80.5/12/4.5/2/1" in table
    assert max(len(ln) for ln in table.splitlines()) <= 110
    assert await asyncio.to_thread(cli.main, [*base, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("by,key,requests,") and lines[-1].startswith("total,TOTAL,3,")


async def test_cli_simulate_replays_the_period(engine, db_url, tmp_path, capsys):
    import asyncio

    from callbackd import cli

    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(f'[database]\nurl = "{db_url}"\n\n[schedule]\nhours = {{ "mon-sun" = "00:00-24:00" }}\n')
    cfg.chmod(0o600)
    base = ["-c", str(cfg), "simulate", "--from", "2026-03-02", "--to", "2026-03-03", "--runs", "3"]
    assert (
        await asyncio.to_thread(cli.main, [*base, "--format", "json", "--operators", "3", "--delays", "30m"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (out["offered"], out["leads"]) == (4, 1)  # the callback leg is not an offered call
    # 2 answered of 3 counted tries; each rank has fewer than 3, so both are pooled
    assert out["fitted"]["reach_by_try"] == [pytest.approx(2 / 3)] * 2
    assert out["measured"]["car"] == 0.5
    # Two clients had tries, each replayed as it went. L2's caller finds an operator free in the
    # replay, so only the lead is called back: reached on its stored first try in every run.
    assert (out["fitted"]["reach"], out["fitted"]["clients_replayed"]) == ("clients", 2)
    assert out["scenarios"]["as stored"]["reached_by_callback"] == {"mean": 1, "low": 1, "high": 1}
    assert set(out["scenarios"]) == {"as stored", "dialer off", "what-if"}
    assert out["scenarios"]["what-if"]["operators"] == 3
    assert out["scenarios"]["dialer off"]["callbacks_per_hour"]["mean"] == 0
    # The rota: one of three operators away all day long, every scenario pays for it.
    full = ["--format", "json", "--operators", "3", "--delays", "30m"]
    assert await asyncio.to_thread(cli.main, [*base, *full, "--breaks", "00:00-00:00"]) == 0
    away = json.loads(capsys.readouterr().out)
    assert away["fitted"]["breaks"] == ["00:00:00-00:00:00"]
    assert away["scenarios"]["what-if"]["occupancy"]["mean"] == pytest.approx(
        out["scenarios"]["what-if"]["occupancy"]["mean"] * 3 / 2
    )
    assert await asyncio.to_thread(cli.main, [*base, "--format", "json", "--reach", "fitted"]) == 0
    drawn = json.loads(capsys.readouterr().out)
    assert (drawn["fitted"]["reach"], drawn["fitted"]["clients_replayed"]) == ("fitted", 0)
    assert await asyncio.to_thread(cli.main, base) == 0
    table = capsys.readouterr().out
    assert "net lost rate" in table and "2 clients' stored tries replayed as they went" in table
    assert await asyncio.to_thread(cli.main, [*base, "--delays", "soon"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("callbackd: error: simulate: --delays") and "\n" not in err
