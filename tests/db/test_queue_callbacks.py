"""Per-queue callbacks on real databases: the dialer claims and rings by the client's queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from daemonkit import RecordingAmi

from callbackd.adapters import db
from callbackd.adapters.store import Store
from callbackd.app import CLAIM_LEASE
from callbackd.config import DialerConfig
from callbackd.dialer import Dialer
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.intake import Contact, IntakeRules, Source, decide
from callbackd.domain.ladder import Schedule
from callbackd.domain.operators import OperatorPool

RULES = IntakeRules(region="US")
CFG = DialerConfig(
    queues=["support", "sales"],
    max_concurrent=10,
    by_queue={"sales": {"fallback": ["support"], "outbound_callerid": "+15550111"}},
)


def rang(ami: RecordingAmi) -> dict[str, str]:
    """Client number -> operator channel, for every Originate sent."""
    return {f["CallerID"].rsplit("<", 1)[1].rstrip(">"): f["Channel"] for f in ami.originates}


def member(interface: str, queue: str, paused: str = "0") -> dict[str, str]:
    return {
        "Event": "QueueMember",
        "Queue": queue,
        "Name": interface,
        "StateInterface": interface,
        "Location": interface,
        "Status": "1",
        "Paused": paused,
        "InCall": "0",
        "LastCall": "0",
    }


def waiting(queue: str, count: int) -> dict[str, str]:
    return {"Event": "QueueParams", "Queue": queue, "Calls": str(count)}


@pytest.fixture
async def store(db_url):
    engine = db.make_engine(db_url)
    await db.upgrade(engine)
    yield Store(
        engine,
        node="n1",
        schedule=Schedule(calendar=BusinessCalendar.always_open("UTC")),
        claim_lease=CLAIM_LEASE,
        pbx="lab",
    )
    await engine.dispose()


async def add(store: Store, ref: str, number: str, at, queue: str | None) -> int:
    c = Contact(Source.AMI, ref, number, "queue_abandon", at, waited=30, queue=queue)
    res = await store.record_contact(c, decide(c, RULES))
    assert res.request_id is not None
    return res.request_id


async def run_tick(store: Store, pool: OperatorPool, now) -> RecordingAmi:
    ami = RecordingAmi()
    dialer = Dialer(CFG, store, ami, pool, clock=lambda: now)  # type: ignore[arg-type]
    dialer.reconciled = True
    await dialer.tick()
    await dialer.close()
    return ami


async def test_each_callback_rings_a_member_of_the_queue_its_client_called(store, now):
    # the sales client is the oldest: with one shared pool it would get op1 (least recently used)
    await add(store, "S1", "2025550101", now - timedelta(minutes=3), "sales")
    await add(store, "P1", "2025550102", now - timedelta(minutes=2), "support")
    pool = OperatorPool(CFG.queues)
    pool.resync([member("PJSIP/op1", "support"), member("PJSIP/op2", "sales")])
    ami = await run_tick(store, pool, now)
    assert rang(ami) == {"+12025550101": "PJSIP/op2", "+12025550102": "PJSIP/op1"}
    sales = next(f for f in ami.originates if "+12025550101" in f["CallerID"])
    assert "CBD_OUTCID=+15550111" in sales["Variable"]


async def test_callers_waiting_in_one_queue_hold_back_only_its_callbacks(store, now):
    await add(store, "P1", "2025550102", now - timedelta(minutes=3), "support")
    await add(store, "S1", "2025550101", now - timedelta(minutes=2), "sales")
    pool = OperatorPool(CFG.queues)
    pool.resync([member("PJSIP/op1", "support"), member("PJSIP/op2", "sales"), waiting("support", 1)])
    ami = await run_tick(store, pool, now)
    assert rang(ami) == {"+12025550101": "PJSIP/op2"}
    pending = await store.claim_due(now, 10)
    assert [r.number for r in pending] == ["+12025550102"], "the support request was left due"


async def test_a_queue_with_nobody_free_falls_back_and_one_without_fallback_waits(store, now):
    await add(store, "S1", "2025550101", now - timedelta(minutes=3), "sales")
    await add(store, "P1", "2025550102", now - timedelta(minutes=2), "support")
    await add(store, "W1", "2025550103", now - timedelta(minutes=1), None)  # a web lead
    pool = OperatorPool(CFG.queues)
    # op2 is paused in sales only; op1 takes support, and sales falls back to it.
    pool.resync([member("PJSIP/op1", "support"), member("PJSIP/op2", "sales", paused="1")])
    ami = await run_tick(store, pool, now)
    assert rang(ami) == {"+12025550101": "PJSIP/op1"}, "the oldest, sales, got the fall-back member"
    left = sorted(r.number for r in await store.claim_due(now, 10))
    assert left == ["+12025550102", "+12025550103"]
