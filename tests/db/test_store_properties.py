"""Property: random interleavings of intake, two dialer nodes and admin calls on a real SQLite
store keep the invariants the dialers rely on, checked in the database after every step.

Two nodes share the database. Each passes only its own busy numbers to the claim (as
Dialer.tick does); everything else is random: new contacts (valid, blocked and junk numbers,
redeliveries), claims, attempts and their outcomes (also late ones from a node whose attempt
was taken over), recoveries, admin cancel and retry during a ring, reconciliation of the other
node's attempts after its lease, stale-claim release, expiry, time passing. Never two attempts
of one number in flight; a closed request reopens only by an admin's retry.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, select

from callbackd.adapters import db
from callbackd.adapters import models as m
from callbackd.adapters.store import NotFound, NumberHasOpenRequest, Store
from callbackd.app import CLAIM_LEASE
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.errors import IllegalTransition
from callbackd.domain.intake import Contact, IntakeRules, Source, decide
from callbackd.domain.ladder import RetryLadder, Schedule
from callbackd.domain.outcomes import Outcome
from callbackd.domain.phone import NumberRules
from callbackd.domain.retry import OperatorFailover
from callbackd.domain.states import IN_FLIGHT_ATTEMPTS, OPEN_STATUSES, RequestEvent, RequestStatus

MAX_ATTEMPTS = 3
RULES = IntakeRules(region="US", numbers=NumberRules(blocked_prefixes=("+1900",)))
SCHEDULE = Schedule(
    calendar=BusinessCalendar.always_open("UTC"),
    ladder=RetryLadder(delays=(timedelta(minutes=10), timedelta(minutes=30)), max_attempts=MAX_ATTEMPTS),
    max_age=timedelta(days=1),
)
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
E164_RE = re.compile(r"\+[1-9]\d{6,14}")
# Half the contacts are for two numbers, so merges, closes and reopens meet often.
RAW_NUMBERS = st.sampled_from(["2025550123", "+1 202 555 0123", "3125550188"]) | st.sampled_from(
    [
        "+442079460958",
        "+19005550123",  # blocked prefix
        "anonymous",
        "+1202555&PJSIP/x",
        "${EXEC(rm -rf /)}",
        "123,456",
    ]
)
IN_FLIGHT = [a.value for a in IN_FLIGHT_ATTEMPTS]


NODES = ("a", "b")


class StoreMachine(RuleBasedStateMachine):
    loop: asyncio.AbstractEventLoop
    stores: dict[str, Store]

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.store = self.stores["a"]
        # Per node: claimed, no attempt started yet (request id -> token); attempts it follows.
        self.claimed: dict[str, dict[int, str | None]] = {n: {} for n in NODES}
        self.in_flight: dict[str, dict[str, str]] = {n: {} for n in NODES}  # attempt id -> number
        self.retries: Counter[int] = Counter()  # admin retries per request
        self.retried_now: set[int] = set()  # reopened by an admin in this step
        self.statuses: dict[int, str] = {}
        self.refs = 0
        self.run(self._wipe())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _wipe(self) -> None:
        async with self.store.session() as s, s.begin():
            for table in (m.Attempt, m.Contact, m.Request, m.Call):
                await s.execute(delete(table))

    async def _request_ids(self) -> list[int]:
        async with self.store.session() as s:
            return list((await s.execute(select(m.Request.id))).scalars())

    # -- intake ------------------------------------------------------------------------

    @rule(raw=RAW_NUMBERS, source=st.sampled_from([Source.AMI, Source.HTTP, Source.AGI]), again=st.booleans())
    def contact(self, raw: str, source: Source, again: bool) -> None:
        if not (again and self.refs):
            self.refs += 1
        c = Contact(
            source=source,
            source_ref=f"ref-{self.refs}",  # `again` redelivers the last one
            raw_number=raw,
            reason="queue_abandon",
            at=self.now,
            waited=30,
        )
        self.run(self.store.record_contact(c, decide(c, RULES)))

    @rule(number=st.sampled_from(["+12025550123", "+13125550188"]))
    def recover(self, number: str) -> None:
        self.run(self.store.recover(number, self.now, "client_called_in"))

    # -- the dialers -------------------------------------------------------------------

    @rule(node=st.sampled_from(NODES), limit=st.integers(1, 3))
    def claim_due(self, node: str, limit: int) -> None:
        busy = list(self.in_flight[node].values())
        claimed = self.run(self.stores[node].claim_due(self.now, limit, exclude_numbers=busy))
        for req in claimed:
            assert req.status == RequestStatus.DIALLING and req.number not in busy
            assert E164_RE.fullmatch(req.number), req.number
            self.claimed[node][req.id] = req.claim_token

    def _with(self, table: dict[str, dict[Any, Any]], data: st.DataObject) -> str:
        return data.draw(st.sampled_from([n for n in NODES if table[n]]))

    @precondition(lambda self: any(self.claimed.values()))
    @rule(data=st.data(), operator=st.sampled_from(["PJSIP/op1", "PJSIP/op2"]))
    def start_attempt(self, data: st.DataObject, operator: str) -> None:
        node = self._with(self.claimed, data)
        rid = data.draw(st.sampled_from(sorted(self.claimed[node])))
        token = self.claimed[node].pop(rid)
        try:
            att = self.run(self.stores[node].start_attempt(rid, operator, self.now, token=token))
        except NotFound:  # cancelled, recovered or released between the claim and the attempt
            return
        self.in_flight[node][att.id] = att.number

    @precondition(lambda self: any(self.claimed.values()))
    @rule(data=st.data())
    def unclaim(self, data: st.DataObject) -> None:
        node = self._with(self.claimed, data)
        rid = data.draw(st.sampled_from(sorted(self.claimed[node])))
        self.run(self.stores[node].unclaim(rid, self.now, token=self.claimed[node].pop(rid)))

    @precondition(lambda self: any(self.in_flight.values()))
    @rule(data=st.data(), outcome=st.sampled_from(Outcome))
    def finish_attempt(self, data: st.DataObject, outcome: Outcome) -> None:
        node = self._with(self.in_flight, data)
        attempt_id = data.draw(st.sampled_from(sorted(self.in_flight[node])))
        del self.in_flight[node][attempt_id]
        self.run(
            self.stores[node].finish_attempt(
                attempt_id, outcome, self.now, failover=OperatorFailover(2, timedelta(minutes=1))
            )
        )

    @rule(node=st.sampled_from(NODES), gone=st.booleans())
    def reconcile(self, node: str, gone: bool) -> None:
        """What Dialer.reconcile does with the in-flight rows it may take over."""
        store = self.stores[node]
        for row in self.run(store.in_flight(self.now)):
            if not self.run(store.take_over(row.id, self.now)):
                continue
            if gone:
                self.run(
                    store.finish_attempt(
                        row.id,
                        Outcome.RESULT_LOST,
                        self.now,
                        failover=OperatorFailover(2, timedelta(minutes=1)),
                    )
                )
            else:  # still up: followed here; the other node's belief is stale now
                self.in_flight[node][row.id] = row.number

    # -- admin and housekeeping ------------------------------------------------------------

    @rule(data=st.data(), event=st.sampled_from([RequestEvent.CANCEL, RequestEvent.RETRY_NOW]))
    def admin(self, data: st.DataObject, event: RequestEvent) -> None:
        ids = self.run(self._request_ids())
        if not ids:
            return
        rid = data.draw(st.sampled_from(ids))
        try:
            self.run(self.store.admin_event(rid, event, self.now))
        except IllegalTransition:
            return
        if event is RequestEvent.RETRY_NOW:
            self.retries[rid] += 1
            self.retried_now.add(rid)

    @precondition(lambda self: any(self.in_flight.values()))
    @rule(data=st.data(), retry=st.booleans())
    def cancel_while_ringing(self, data: st.DataObject, retry: bool) -> None:
        """An admin cancels (and maybe retries) a request whose attempt rings on a node."""
        node = self._with(self.in_flight, data)
        attempt_id = data.draw(st.sampled_from(sorted(self.in_flight[node])))
        rid = self.run(self._attempt_request(attempt_id))
        for event in (RequestEvent.CANCEL, RequestEvent.RETRY_NOW)[: 1 + retry]:
            try:
                self.run(self.store.admin_event(rid, event, self.now))
            except IllegalTransition:
                return
        if retry:
            self.retries[rid] += 1
            self.retried_now.add(rid)
            # The other daemon polls during the ring, as it does every few seconds.
            other = next(n for n in NODES if n != node)
            self.claim_due(other, 3)
            for req_id, token in list(self.claimed[other].items()):
                self.claimed[other].pop(req_id)
                try:
                    att = self.run(
                        self.stores[other].start_attempt(req_id, "PJSIP/op2", self.now, token=token)
                    )
                except NotFound:
                    continue
                self.in_flight[other][att.id] = att.number

    async def _attempt_request(self, attempt_id: str) -> int:
        async with self.store.session() as s:
            att = await s.get(m.Attempt, attempt_id)
            assert att is not None
            return att.request_id

    @rule(minutes=st.integers(0, 180))
    def time_passes(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @rule(node=st.sampled_from(NODES))
    def housekeeping(self, node: str) -> None:
        self.run(self.stores[node].expire_old(self.now))
        self.run(self.stores[node].release_stale_claims(self.now))

    # -- invariants, read back from the database -----------------------------------------------

    @invariant()
    def database_is_consistent(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        async with self.store.session() as s:
            requests = list((await s.execute(select(m.Request))).scalars())
            attempts = list((await s.execute(select(m.Attempt))).scalars())
            contacts = list((await s.execute(select(m.Contact))).scalars())
        open_numbers = Counter(r.number for r in requests if r.status in OPEN_STATUSES)
        assert all(n == 1 for n in open_numbers.values()), open_numbers
        by_request: dict[int, list[m.Attempt]] = {}
        for a in attempts:
            by_request.setdefault(a.request_id, []).append(a)
            assert E164_RE.fullmatch(a.number), a.number
        in_flight = Counter(a.number for a in attempts if a.status in IN_FLIGHT)
        assert all(n == 1 for n in in_flight.values()), f"two attempts of one number in flight: {in_flight}"
        for r in requests:
            before = self.statuses.get(r.id)
            if before is not None and before not in OPEN_STATUSES and r.status != before:
                assert r.id in self.retried_now, f"request {r.id} went {before} -> {r.status} unasked"
            self.statuses[r.id] = r.status
            assert E164_RE.fullmatch(r.number), r.number
            mine = by_request.get(r.id, [])
            live = [a for a in mine if a.status in IN_FLIGHT]
            assert len(live) <= 1, f"request {r.id} has {len(live)} attempts in flight"
            assert sum(1 for a in mine if a.counted) == r.attempts_made, r.id
            # Only an admin's retry grants a try beyond the ladder, one per retry.
            assert r.attempts_made <= MAX_ATTEMPTS + self.retries[r.id], (r.id, r.attempts_made)
            if r.status in OPEN_STATUSES:
                assert r.closed_at is None
            else:
                assert r.closed_at is not None and r.due_at is None
        self.retried_now.clear()
        for c in contacts:
            assert c.number is None or E164_RE.fullmatch(c.number), c.number
            if c.request_id is not None:
                assert c.disposition == "schedule"


async def test_an_admin_retry_never_opens_a_second_request_for_a_number(store):
    """Found by the machine below: reopening a cancelled request while a newer one is open."""
    c1, c2 = (Contact(Source.AMI, ref, "2025550123", "queue_abandon", T0, waited=30) for ref in ("a", "b"))
    first = await store.record_contact(c1, decide(c1, RULES))
    await store.admin_event(first.request_id, RequestEvent.CANCEL, T0)
    second = await store.record_contact(c2, decide(c2, RULES))
    with pytest.raises(NumberHasOpenRequest, match=f"open request {second.request_id}") as err:
        await store.admin_event(first.request_id, RequestEvent.RETRY_NOW, T0)
    assert isinstance(err.value, IllegalTransition)  # the CLI reports it like any refused change
    req, _, _ = await store.get_request(first.request_id)
    assert req.status == RequestStatus.CANCELLED
    await store.admin_event(second.request_id, RequestEvent.CANCEL, T0)
    assert (await store.admin_event(first.request_id, RequestEvent.RETRY_NOW, T0)).status == "open"


def test_store_invariants_hold_under_random_interleavings(tmp_path):
    loop = asyncio.new_event_loop()
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path}/props.db")
    try:
        loop.run_until_complete(db.upgrade(engine))
        StoreMachine.loop = loop
        StoreMachine.stores = {
            n: Store(engine, node=n, schedule=SCHEDULE, claim_lease=CLAIM_LEASE, pbx="lab") for n in NODES
        }
        run_state_machine_as_test(
            StoreMachine,
            settings=settings(
                max_examples=40,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()
