"""Faults around attempts on real databases: a cancel racing an outcome on SQLite, a database
that refuses the outcome write, a launch failing in the middle of a batch."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import timedelta

import asyncpg
from sqlalchemy import event

from callbackd import logs
from callbackd.adapters import db
from callbackd.adapters.ami import AmiNotConnected
from callbackd.adapters.store import Store
from callbackd.app import CLAIM_LEASE
from callbackd.config import DialerConfig
from callbackd.dialer import Dialer
from callbackd.domain.attempts import Attempt
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.intake import Contact, IntakeRules, Source, decide
from callbackd.domain.ladder import Schedule
from callbackd.domain.operators import OperatorPool
from callbackd.domain.outcomes import Outcome
from callbackd.domain.retry import OperatorFailover
from callbackd.domain.states import RequestEvent, RequestStatus

RULES = IntakeRules(region="US")
PG_ADMIN_DSN = os.environ.get(
    "CALLBACKD_TEST_PG", "postgresql://callbackd_test:callbackd_test@127.0.0.1:5432/postgres"
)


def always_open_schedule() -> Schedule:
    return Schedule(calendar=BusinessCalendar.always_open("UTC"))


FAILOVER = OperatorFailover(3, timedelta(seconds=30))


async def add(store: Store, ref: str, number: str, now) -> int:
    c = Contact(Source.AMI, ref, number, "queue_abandon", now, waited=30)
    res = await store.record_contact(c, decide(c, RULES))
    assert res.request_id is not None
    return res.request_id


async def make_store(url: str, node: str = "n1") -> Store:
    engine = db.make_engine(url)
    await db.upgrade(engine)
    return Store(engine, node=node, schedule=always_open_schedule(), claim_lease=CLAIM_LEASE, pbx="lab")


async def test_a_cancel_landing_inside_finish_attempt_is_kept_on_sqlite(sqlite_url, now):
    """finish_attempt reads the request, a `requests cancel` (another process) commits, then
    finish writes: on a deferred SQLite transaction the cancel was overwritten and the client
    called again."""
    store = await make_store(sqlite_url)
    rid = await add(store, "L1", "2025550123", now)
    [req] = await store.claim_due(now, 1)
    att = await store.start_attempt(rid, "PJSIP/op1", now, token=req.claim_token)
    results: list[object] = []

    def cli_cancel() -> None:  # the CLI: its own process in real life, its own thread and loop here
        async def cancel() -> object:
            admin = await make_store(sqlite_url, node="cli")
            try:
                return await admin.admin_event(rid, RequestEvent.CANCEL, now + timedelta(seconds=21))
            finally:
                await admin.engine.dispose()

        results.append(asyncio.run(cancel()))

    cancel = threading.Thread(target=cli_cancel)

    @event.listens_for(store.engine.sync_engine, "before_cursor_execute")
    def _between_read_and_write(conn, cursor, statement, *args) -> None:
        # finish_attempt has read the request and is about to write: the cancel comes now,
        # and gets a second to land.
        if statement.lstrip().upper().startswith("UPDATE") and not cancel.is_alive() and not results:
            cancel.start()
            cancel.join(1.0)

    done = await store.finish_attempt(
        att.id, Outcome.CLIENT_BUSY, now + timedelta(seconds=20), failover=FAILOVER
    )
    await asyncio.to_thread(cancel.join, 30)
    assert results and results[0].status == RequestStatus.CANCELLED  # what the CLI printed
    final, attempts, _ = await store.get_request(rid)
    assert final.status == RequestStatus.CANCELLED, f"the cancel was lost: {done}"
    assert attempts[0].outcome == "client_busy" and final.attempts_made == 1
    assert await store.claim_due(now + timedelta(hours=2), 5) == []
    await store.engine.dispose()


class NoPbx:
    """The AMI link as it is between a claim and a reconnect: down."""

    connected = True

    def originate(self, fields):
        raise AmiNotConnected("AMI is not connected")

    async def action(self, action, timeout=10.0):
        raise AmiNotConnected("AMI is not connected")


def pool(*operators: str) -> OperatorPool:
    p = OperatorPool(["support"], 0)
    p.resync(
        [
            {
                "Event": "QueueMember",
                "Queue": "support",
                "Name": op,
                "StateInterface": op,
                "Location": op,
                "Status": "1",
                "Paused": "0",
                "InCall": "0",
            }
            for op in operators
        ]
    )
    return p


class RecoveredInBetween(Store):
    """The client calls in between the claim and start_attempt of the first request."""

    first: int | None = None

    async def start_attempt(self, request_id, operator, now, *, token):
        if request_id == self.first:
            req, _, _ = await self.get_request(request_id)
            await self.recover(req.number, now, "client_called_in")
        return await super().start_attempt(request_id, operator, now, token=token)


async def test_a_launch_failing_mid_batch_leaves_the_rest_going(sqlite_url, now):
    engine = db.make_engine(sqlite_url)
    await db.upgrade(engine)
    store = RecoveredInBetween(engine, node="n1", schedule=always_open_schedule(), claim_lease=CLAIM_LEASE)
    first = await add(store, "L1", "2025550123", now)
    second = await add(store, "L2", "2025550124", now + timedelta(seconds=1))
    store.first = first
    cfg = DialerConfig(max_concurrent=2)
    ops = pool("PJSIP/op1", "PJSIP/op2")
    assert len(ops.free(now.timestamp())) == 2
    dialer = Dialer(cfg, store, NoPbx(), ops, clock=lambda: now + timedelta(seconds=5))  # type: ignore[arg-type]
    await dialer.tick()
    await dialer.step()  # stores the outcome of the Originate that could not be sent
    r1, a1, _ = await store.get_request(first)
    r2, a2, _ = await store.get_request(second)
    assert r1.status == RequestStatus.RECOVERED and a1 == []
    assert len(a2) == 1 and a2[0].outcome == "operator_no_answer"
    assert r2.status == RequestStatus.OPEN, "the batch stopped at the failed launch"
    assert ops.reserved == set() and dialer.runs == {} and dialer.unsaved == {}
    await engine.dispose()


async def test_an_outcome_the_database_refuses_is_kept_and_stored_later(pg_url, now):
    """PostgreSQL refuses connections while the outcome is written: the outcome stays in memory
    and in the status, the error reaches the status's last error, and it is stored once the
    database is back; the request never stays dialling and the operator is free at once."""
    logs.setup("info", "json")
    url = pg_url
    name = url.rsplit("/", 1)[1]
    store = await make_store(url)
    rid = await add(store, "L1", "2025550123", now)
    [req] = await store.claim_due(now, 1)
    row = await store.start_attempt(rid, "PJSIP/op1", now, token=req.claim_token)
    ops = pool("PJSIP/op1")
    ops.reserve("PJSIP/op1", now.timestamp())
    dialer = Dialer(DialerConfig(), store, NoPbx(), ops, clock=lambda: now)  # type: ignore[arg-type]
    att = Attempt(row.id, row.channel_id, rid, req.number, "PJSIP/op1", 1, started_at=now)
    dialer.apply(dialer.tracker.begin(att, now))
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        logs.last_problem.last = None
        client_leg = {
            "Event": "UserEvent",
            "UserEvent": "CallbackdResult",
            "Attempt": row.id,
            "Stage": "client",
            "DialStatus": "BUSY",
            "ClientCause": "17",
        }
        dialer.on_event(client_leg)
        await dialer.step()
        assert [u["attempt_id"] for u in dialer.unsaved_outcomes()] == [row.id]
        assert dialer.unsaved_outcomes()[0]["outcome"] == "client_busy"
        assert ops.reserved == set()  # the operator is free although the write failed
        problem = logs.last_problem.last
        assert problem is not None and problem["event"] == "attempt.outcome_unsaved"
        assert not await dialer.drain(timedelta(seconds=0.1))
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    dialer.accepting = True
    for _ in range(200):
        await asyncio.sleep(0.1)
        await dialer.step()
        if not dialer.unsaved:
            break
    assert dialer.unsaved == {}
    final, attempts, _ = await store.get_request(rid)
    assert final.status == RequestStatus.OPEN and attempts[0].outcome == "client_busy"
    assert final.attempts_made == 1
    await store.engine.dispose()


async def test_any_node_reconciles_a_dead_nodes_attempts_once_its_lease_ran_out(sqlite_url, now):
    """Before, only a daemon started again under the dead node's name did."""
    dead = await make_store(sqlite_url, node="dead")
    rids = [await add(dead, f"L{i}", f"202555012{i}", now) for i in range(2)]
    rows = []
    for req in await dead.claim_due(now, 2):
        rows.append(await dead.start_attempt(req.id, f"PJSIP/op{req.id}", now, token=req.claim_token))
    alive = await make_store(sqlite_url, node="alive")
    early = Dialer(DialerConfig(), alive, NoPbx(), pool(), clock=lambda: now + timedelta(seconds=30))  # type: ignore[arg-type]
    await early.reconcile({rows[0].channel_id}, now + timedelta(seconds=30))
    assert early.runs == {} and early.unsaved == {}  # the lease has not run out: hands off
    later = now + dead.attempt_lease + timedelta(seconds=5)
    dialer = Dialer(DialerConfig(), alive, NoPbx(), pool(), clock=lambda: later)  # type: ignore[arg-type]
    await dialer.reconcile({rows[0].channel_id}, later)  # the first call is still up, the second gone
    assert list(dialer.runs) == [rows[0].channel_id]
    assert dialer.unsaved == {}
    r0, a0, _ = await alive.get_request(rids[0])
    r1, a1, _ = await alive.get_request(rids[1])
    assert r0.status == RequestStatus.DIALLING and a0[0].node == "alive"
    assert r1.status == RequestStatus.OPEN and a1[0].outcome == "result_lost" and r1.attempts_made == 1
    await dead.engine.dispose()
    await alive.engine.dispose()
