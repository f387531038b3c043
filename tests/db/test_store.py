"""The store on real SQLite and PostgreSQL: exactly-once contacts, one open request per number,
claims, and the ladder applied to attempt outcomes."""

from datetime import timedelta

import pytest

from callbackd.adapters import db
from callbackd.adapters.store import NotFound, Store
from callbackd.app import CLAIM_LEASE
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.intake import Contact, Disposition, IntakeRules, Source, decide
from callbackd.domain.ladder import Schedule
from callbackd.domain.outcomes import Outcome
from callbackd.domain.retry import OperatorFailover
from callbackd.domain.states import AttemptStatus, RequestEvent, RequestStatus

RULES = IntakeRules(region="US")
NUMBER = "+12025550123"


def contact(ref, number="2025550123", at=None, source=Source.AMI, waited=30, reason="queue_abandon", **kw):
    from datetime import UTC, datetime

    kw.setdefault("caller_gave_up", True)
    return Contact(
        source=source,
        source_ref=ref,
        raw_number=number,
        reason=reason,
        at=at or datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
        waited=waited,
        **kw,
    )


async def add(store, c):
    return await store.record_contact(c, decide(c, RULES))


async def test_migrations_reach_head_and_are_idempotent(db_url):
    engine = db.make_engine(db_url)
    try:
        await db.upgrade(engine)
        await db.upgrade(engine)
        assert await db.current_revision(engine) == db.head_revision()
    finally:
        await engine.dispose()


async def test_contact_is_stored_once_and_merges_into_one_open_request(store, now):
    first = await add(store, contact("L1", at=now))
    assert first.created and first.request_id is not None
    again = await add(store, contact("L1", at=now))  # same Linkedid after a reconnect
    assert again.duplicate and again.request_id == first.request_id
    merged = await add(
        store, contact("form-9", source=Source.HTTP, reason="web_form", at=now + timedelta(minutes=1))
    )
    assert merged.merged and merged.request_id == first.request_id
    req, _attempts, contacts = await store.get_request(first.request_id)
    assert req.contact_count == 2 and req.sources == ["ami", "http"] and len(contacts) == 2
    assert req.status == RequestStatus.OPEN and req.due_at == now
    assert len(await store.list_requests()) == 1


async def test_a_missed_call_pulls_a_later_web_lead_in(db_url, now):
    """Regression: a merge never moved the due time earlier, so a lead wanted six days
    ahead parked a real abandon from the same number for six days."""
    engine = db.make_engine(db_url)
    await db.upgrade(engine)
    schedule = Schedule(calendar=BusinessCalendar.always_open("UTC"), max_age=timedelta(days=7))
    store = Store(engine, node="test-node", schedule=schedule, claim_lease=CLAIM_LEASE)
    try:
        web = dict(source=Source.HTTP, reason="web_form")
        lead = await add(store, contact("form-1", at=now, preferred_at=now + timedelta(days=6), **web))
        req, _, _ = await store.get_request(lead.request_id)
        assert req.due_at == now + timedelta(days=6)
        call = await add(store, contact("L1", at=now + timedelta(minutes=5)))
        assert call.merged and call.request_id == lead.request_id
        req, _, _ = await store.get_request(lead.request_id)
        assert req.due_at == now + timedelta(minutes=5)
        # A later lead asking for another day does not push the call back out.
        later = contact("form-2", at=now + timedelta(minutes=9), preferred_at=now + timedelta(days=1), **web)
        assert (await add(store, later)).merged
        req, _, _ = await store.get_request(lead.request_id)
        assert req.due_at == now + timedelta(minutes=5) and req.contact_count == 3
        assert [r.id for r in await store.claim_due(now + timedelta(minutes=5), 5)] == [lead.request_id]
    finally:
        await engine.dispose()


async def test_contacts_that_do_not_schedule_create_no_request(store, now):
    for ref, num, waited, expected in [
        ("a", "anonymous", 30, Disposition.ANONYMOUS),
        ("b", "2025550123", 2, Disposition.SHORT),
        ("c", "12&PJSIP/evil", 30, Disposition.INVALID),
    ]:
        c = contact(ref, number=num, waited=waited, at=now)
        assert decide(c, RULES).disposition is expected
        res = await add(store, c)
        assert res.request_id is None and res.contact_id is not None
    assert await store.list_requests() == []


async def _claim_one(store, now):
    [req] = await store.claim_due(now, 5)
    assert req.status == RequestStatus.DIALLING
    return req


async def test_busy_then_answer_walks_the_ladder(store, now):
    await add(store, contact("L1", at=now))
    req = await _claim_one(store, now)
    assert await store.claim_due(now, 5) == []  # never twice
    att = await store.start_attempt(req.id, "PJSIP/op1", now, token=req.claim_token)
    assert att.status == AttemptStatus.DIALLING and att.try_no == 1 and att.channel_id == f"cbd-{att.id}"
    done = await store.finish_attempt(
        att.id,
        Outcome.CLIENT_BUSY,
        now + timedelta(seconds=20),
        failover=OperatorFailover(3, timedelta(seconds=30)),
    )
    assert done.request_status == RequestStatus.OPEN and done.counted
    assert done.due_at == now + timedelta(minutes=10)  # the busy delay, from the attempt's start
    assert await store.claim_due(now + timedelta(minutes=9), 5) == []
    later = now + timedelta(minutes=10)
    req = await _claim_one(store, later)
    att2 = await store.start_attempt(req.id, "PJSIP/op2", later, token=req.claim_token)
    assert att2.try_no == 2
    done = await store.finish_attempt(
        att2.id,
        Outcome.ANSWERED,
        later + timedelta(seconds=60),
        failover=OperatorFailover(3, timedelta(seconds=30)),
        talk_seconds=42,
    )
    assert done.request_status == RequestStatus.REACHED and done.close_reason == "reached"
    # Finishing twice changes nothing.
    assert (
        await store.finish_attempt(
            att2.id,
            Outcome.CLIENT_BUSY,
            later,
            failover=OperatorFailover(3, timedelta(seconds=30)),
        )
        is None
    )
    req, attempts, _ = await store.get_request(req.id)
    assert req.attempts_made == 2 and [a.outcome for a in attempts] == ["client_busy", "answered"]
    assert attempts[1].talk_seconds == 42
    # A new miss from the same number after the request closed opens a new request.
    res = await add(store, contact("L2", at=later + timedelta(hours=1)))
    assert res.created and res.request_id != req.id


async def test_operator_failures_do_not_use_client_tries(store, now):
    await add(store, contact("L1", at=now))
    for i in range(3):
        req = await _claim_one(store, now)
        att = await store.start_attempt(req.id, f"PJSIP/op{i}", now, token=req.claim_token)
        done = await store.finish_attempt(
            att.id,
            Outcome.OPERATOR_NO_ANSWER,
            now,
            failover=OperatorFailover(3, timedelta(seconds=30)),
        )
        assert not done.counted
    # After three operators failed, the request waits the retry delay.
    assert done.due_at == now + timedelta(seconds=30)
    req, _, _ = await store.get_request(req.id)
    assert req.attempts_made == 0


async def test_invalid_number_closes_and_max_attempts_fail(store, now):
    await add(store, contact("L1", at=now))
    req = await _claim_one(store, now)
    att = await store.start_attempt(req.id, "PJSIP/op1", now, token=req.claim_token)
    done = await store.finish_attempt(
        att.id,
        Outcome.INVALID_NUMBER,
        now,
        failover=OperatorFailover(3, timedelta(seconds=30)),
    )
    assert (done.request_status, done.close_reason) == (RequestStatus.FAILED, "invalid_number")

    await add(store, contact("L2", number="2025550124", at=now))
    t = now
    for _ in range(5):
        [req] = await store.claim_due(t, 5)
        att = await store.start_attempt(req.id, "PJSIP/op1", t, token=req.claim_token)
        done = await store.finish_attempt(
            att.id,
            Outcome.CLIENT_NO_ANSWER,
            t,
            failover=OperatorFailover(3, timedelta(seconds=30)),
        )
        if done.due_at:
            t = done.due_at
    assert (done.request_status, done.close_reason) == (RequestStatus.FAILED, "max_attempts")
    req, attempts, _ = await store.get_request(req.id)
    assert req.attempts_made == 5 and len(attempts) == 5


async def test_recovery_cancel_and_retry(store, now):
    res = await add(store, contact("L1", at=now))
    assert await store.recover(NUMBER, now, "client_called_in") == [res.request_id]
    assert await store.claim_due(now, 5) == []
    res2 = await add(store, contact("L2", at=now))
    req = await store.admin_event(res2.request_id, RequestEvent.CANCEL, now)
    assert req.status == RequestStatus.CANCELLED
    req = await store.admin_event(res2.request_id, RequestEvent.RETRY_NOW, now)
    assert req.status == RequestStatus.OPEN and req.due_at == now


async def test_schedule_by_hand_is_audited_in_the_same_transaction(store, now):
    """On SQLite and PostgreSQL: the change and its audit entry are stored together, or neither."""
    from callbackd.adapters.store import NotFound

    res = await add(store, contact("L1", at=now))
    at = now + timedelta(days=1)
    req = await store.admin_event(res.request_id, RequestEvent.SCHEDULE, now, at=at, actor="user:anna")
    assert req.status == RequestStatus.OPEN and req.due_at == at == req.preferred_at
    assert await store.claim_due(now, 5) == []  # not due before its time
    await store.admin_event(res.request_id, RequestEvent.CANCEL, now, actor="token:crm")
    with pytest.raises(Exception, match="cancel"):  # IllegalTransition: nothing is audited
        await store.admin_event(res.request_id, RequestEvent.CANCEL, now, actor="token:crm")
    with pytest.raises(NotFound):
        await store.admin_event(999_999, RequestEvent.CANCEL, now, actor="token:crm")
    trail = await store.audit_trail(res.request_id)
    assert [(e.actor, e.action, e.detail["to"]) for e in trail] == [
        ("user:anna", "schedule", "open"),
        ("token:crm", "cancel", "cancelled"),
    ]
    assert trail[0].detail["at"] == at.isoformat() and trail[0].at == now


async def test_recovered_while_dialling_keeps_recovered(store, now):
    await add(store, contact("L1", at=now))
    req = await _claim_one(store, now)
    att = await store.start_attempt(req.id, "PJSIP/op1", now, token=req.claim_token)
    await store.recover(NUMBER, now, "client_called_in")
    done = await store.finish_attempt(
        att.id,
        Outcome.CLIENT_BUSY,
        now,
        failover=OperatorFailover(3, timedelta(seconds=30)),
    )
    assert done.request_status == RequestStatus.RECOVERED


async def test_stale_claim_is_released(store, now):
    await add(store, contact("L1", at=now))
    await _claim_one(store, now)
    await store.release_stale_claims(now)  # the lease has not run out
    assert await store.claim_due(now, 5) == []
    await store.release_stale_claims(now + timedelta(hours=3))
    assert len(await store.claim_due(now + timedelta(hours=3), 5)) == 1


@pytest.mark.parametrize("n", [20])
async def test_claims_never_overlap(store, now, n):
    import asyncio

    for i in range(n):
        await add(store, contact(f"L{i}", number=f"20255501{i:02d}", at=now))
    ids: list[int] = []
    for _ in range(n):  # concurrent rounds until everything is claimed
        batches = await asyncio.gather(*(store.claim_due(now, 3) for _ in range(4)))
        ids += [r.id for b in batches for r in b]
        if len(ids) >= n:
            break
    assert len(ids) == len(set(ids)) == n


def _other_node(store, node="other-node"):
    from callbackd.adapters.store import Store

    return Store(
        store.engine, node=node, schedule=store.schedule, claim_lease=store.claim_lease, pbx=store.pbx
    )


FAILOVER = OperatorFailover(3, timedelta(seconds=30))


async def test_cancel_and_retry_while_ringing_dials_nothing_twice(store, now):
    """Cancel and retry while node A's attempt rings: B must not dial the number, and A's
    outcome is applied once, to the request A still holds."""
    b = _other_node(store)
    await add(store, contact("L1", at=now))
    req = await _claim_one(store, now)
    att = await store.start_attempt(req.id, "PJSIP/op1", now, token=req.claim_token)
    await store.admin_event(req.id, RequestEvent.CANCEL, now)
    await store.admin_event(req.id, RequestEvent.RETRY_NOW, now)
    assert await b.claim_due(now + timedelta(seconds=1), 5) == []  # A's call still rings
    done = await store.finish_attempt(att.id, Outcome.ANSWERED, now + timedelta(seconds=9), failover=FAILOVER)
    assert done.request_status == RequestStatus.REACHED
    assert await b.claim_due(now + timedelta(seconds=10), 5) == []


async def test_a_stale_outcome_never_moves_a_request_another_claim_holds(store, now):
    b = _other_node(store)
    await add(store, contact("L1", at=now))
    req = await _claim_one(store, now)
    att = await store.start_attempt(req.id, "PJSIP/op1", now, token=req.claim_token)
    # A is cut off; its lease runs out and B reconciles the attempt as lost, then claims anew.
    later = now + store.attempt_lease + timedelta(seconds=1)
    [row] = await b.in_flight(later)
    assert await b.take_over(row.id, later) and not await store.take_over(row.id, later)
    await b.finish_attempt(row.id, Outcome.RESULT_LOST, later, failover=FAILOVER)
    req_b = (await b.claim_due(later + timedelta(hours=2), 5))[0]
    # A's late writes: the attempt is done, the request B holds is untouched.
    assert await store.finish_attempt(att.id, Outcome.CLIENT_BUSY, later, failover=FAILOVER) is None
    assert not await store.unclaim(req.id, later, token=req.claim_token)
    with pytest.raises(NotFound):
        await store.start_attempt(req.id, "PJSIP/op1", later, token=req.claim_token)
    got, attempts, _ = await store.get_request(req.id)
    assert got.status == RequestStatus.DIALLING and got.claim_token == req_b.claim_token
    assert [a.outcome for a in attempts] == ["result_lost"] and got.attempts_made == 1


async def test_cancel_while_another_node_dials_is_kept(store, now):
    b = _other_node(store)
    await add(store, contact("L1", at=now))
    req = await _claim_one(store, now)
    att = await store.start_attempt(req.id, "PJSIP/op1", now, token=req.claim_token)
    await b.admin_event(req.id, RequestEvent.CANCEL, now)
    assert not await store.mark_attempt(att.id, AttemptStatus.OPERATOR_UP)  # tells A to hang up
    done = await store.finish_attempt(att.id, Outcome.OPERATOR_HANGUP, now, failover=FAILOVER)
    assert done.request_status == RequestStatus.CANCELLED and done.stale
    assert await b.claim_due(now + timedelta(hours=1), 5) == []


async def test_an_old_open_request_is_never_claimed_and_a_retry_restarts_its_age(store, now):
    await add(store, contact("L1", at=now))
    week = now + timedelta(days=8)
    assert await store.claim_due(week, 5) == []  # before any housekeeping pass
    assert await store.expire_old(week) == 1
    [row] = await store.list_requests()
    req = await store.admin_event(row.id, RequestEvent.RETRY_NOW, week)
    assert req.status == RequestStatus.OPEN
    assert await store.expire_old(week + timedelta(minutes=1)) == 0  # the next pass keeps it
    assert len(await store.claim_due(week + timedelta(minutes=1), 5)) == 1
