"""Persistence of calls, contacts, requests and attempts (SQLAlchemy 2 async).

Each public method is one transaction. Status changes go through the domain's
transition table, so an illegal change raises instead of being written.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from callbackd.adapters import models as m
from callbackd.adapters.db import sessionmaker
from callbackd.domain.detection import CALLBACK_CHANNEL_PREFIX, CallTrack
from callbackd.domain.errors import IllegalTransition
from callbackd.domain.intake import Contact, Decision, Disposition, dedup_scope
from callbackd.domain.ladder import Plan, Schedule, Wait
from callbackd.domain.outcomes import Outcome
from callbackd.domain.phone import E164, mask, sanitize_caller_name
from callbackd.domain.retry import OperatorFailover, RequestSnapshot, next_step
from callbackd.domain.states import (
    IN_FLIGHT_ATTEMPTS,
    OPEN_STATUSES,
    AttemptEvent,
    AttemptStatus,
    RequestEvent,
    RequestStatus,
    attempt_transition,
    request_transition,
)

log = structlog.get_logger("callbackd.store")


def _log_plan(request_id: int, number: str, plan: Plan, zones: Sequence[str]) -> None:
    """Why a request waits (or was closed), with the number masked."""
    if plan.due is None:
        log.info(
            "request.closed",
            request_id=request_id,
            number=mask(number),
            close_reason=plan.close_reason,
            client_zones=list(zones),
        )
    else:
        log.info(
            "request.waits",
            request_id=request_id,
            number=mask(number),
            due=plan.due.isoformat(),
            why=plan.wait.value if plan.wait else None,
            client_zones=list(zones),
        )


# The intake's statements, built once (the ORM's expression building is a good part of an item's cost).
_SEEN_CONTACT = select(m.Contact.id, m.Contact.request_id).where(
    m.Contact.pbx == bindparam("pbx"),
    m.Contact.source == bindparam("source"),
    m.Contact.source_ref == bindparam("ref"),
)
_OPEN_REQUESTS = (
    select(m.Request)
    .where(m.Request.number == bindparam("number"), m.Request.status.in_(OPEN_STATUSES))
    .with_for_update()
)

# How long an attempt stays this node's without a renewal (renewed every quarter of it).
ATTEMPT_LEASE = timedelta(minutes=2)


@dataclass(frozen=True)
class ContactResult:
    contact_id: int | None
    request_id: int | None
    duplicate: bool = False
    created: bool = False
    merged: bool = False
    # What was decided for this contact; None for a duplicate (decided when first seen).
    disposition: Disposition | None = None
    # Safe in the local spool, not yet in the database (so no ids yet).
    spooled: bool = False


@dataclass(frozen=True)
class Finished:
    request_id: int
    request_status: str
    outcome: Outcome
    counted: bool
    due_at: datetime | None
    close_reason: str | None
    # The request had moved on (cancelled, recovered, claimed anew): only the attempt row changed.
    stale: bool = False


class NotFound(LookupError):
    pass


class OutsideHours(Exception):
    """The hours of the claimed request ended between its claim and its attempt: nothing was
    started, and the request waits again for its next opening."""


class NumberHasOpenRequest(IllegalTransition):
    """Reopening would give the number a second open request; there is one per number."""

    def __init__(self, request_id: int, status: str, other_id: int) -> None:
        super().__init__("request", status, RequestEvent.RETRY_NOW.value)
        self.other_id = other_id
        self.request_id = request_id
        self.args = (f"its number already has open request {other_id}; use that one",)


def _apply(req: m.Request, event: RequestEvent, now: datetime) -> None:
    req.status = request_transition(req.status, event).value
    req.updated_at = now
    if req.status in OPEN_STATUSES:
        req.closed_at = None
        if req.status == RequestStatus.OPEN:
            req.claimed_by = None
            req.claim_expires = None
    else:
        req.closed_at = now
        req.due_at = None
        req.claimed_by = None
        req.claim_expires = None


class Store:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        node: str,
        schedule: Schedule,
        claim_lease: timedelta,
        pbx: str | None = None,
        attempt_lease: timedelta = ATTEMPT_LEASE,
    ) -> None:
        self.engine = engine
        self.node = node
        # The Asterisk this daemon watches; its Linkedids and Uniqueids are unique only there,
        # and only its live channels say whether an attempt it placed is still up.
        self.pbx = node if pbx is None else pbx
        self.attempt_lease = attempt_lease
        self.schedule = schedule
        self.claim_lease = claim_lease
        self._session = sessionmaker(engine)
        self.outbox: Any = None  # a webhooks.Outbox: writes the events of every flush

    def session(self) -> AsyncSession:
        s = self._session()
        return self.outbox.attach(s) if self.outbox is not None else s

    # -- intake ----------------------------------------------------------------------

    async def record_contact(
        self, contact: Contact, decision: Decision, s: AsyncSession | None = None
    ) -> ContactResult:
        """Store the contact once; create or merge its request when it schedules.

        In *s*'s transaction (see :meth:`unit`) when given: then a racing insert is not retried
        here but fails the transaction, and its caller takes the items again one by one."""
        if s is not None:
            return await self._record_contact(contact, decision, s)
        for _ in range(3):  # a racing daemon may insert the same open number first
            try:
                return await self._record_contact(contact, decision)
            except IntegrityError as exc:
                if "uq_contacts_pbx_source_ref" in str(exc) or "contacts.source_ref" in str(exc):
                    return await self._existing_contact(contact)
                continue
        return await self._record_contact(contact, decision)

    def _same_contact(self, contact: Contact):
        return (
            m.Contact.pbx == dedup_scope(contact.source, self.pbx),
            m.Contact.source == contact.source.value,
            m.Contact.source_ref == contact.source_ref[:128],
        )

    async def _existing_contact(self, contact: Contact) -> ContactResult:
        async with self.session() as s:
            row = (await s.execute(select(m.Contact).where(*self._same_contact(contact)))).scalar_one()
            return ContactResult(row.id, row.request_id, duplicate=True)

    async def _record_contact(
        self, contact: Contact, decision: Decision, s: AsyncSession | None = None
    ) -> ContactResult:
        """One contact; in *s*'s transaction when given (no retry there: a race fails the unit)."""
        if s is None:
            async with self.session() as s, s.begin():
                return await self._record_contact(contact, decision, s)
        contact = self._with_chosen_time(contact, decision)
        pbx, source, ref = self._key(contact)
        seen = (await s.execute(_SEEN_CONTACT, {"pbx": pbx, "source": source, "ref": ref})).first()
        if seen is not None:
            return ContactResult(seen.id, seen.request_id, duplicate=True)
        row = m.Contact(**self._contact_values(contact, decision))
        # The row goes in once its request is known: one INSERT (and one UPDATE of a merged
        # request) in one flush, not an INSERT and then an UPDATE of its request_id.
        created = merged = False
        if decision.schedules and decision.number is not None:
            req = (await s.execute(_OPEN_REQUESTS, {"number": decision.number})).scalar_one_or_none()
            if req is None:
                req = await self._open_new(s, contact, decision)
                created = True
            else:
                self._merge(req, contact, decision)
                merged = True
            row.request_id = req.id
        s.add(row)
        await s.flush()
        return ContactResult(
            row.id, row.request_id, created=created, merged=merged, disposition=decision.disposition
        )

    def _key(self, contact: Contact) -> tuple[str, str, str]:
        """What a contact is stored once per: (pbx, source, source_ref)."""
        return dedup_scope(contact.source, self.pbx), contact.source.value, contact.source_ref[:128]

    def _with_chosen_time(self, contact: Contact, decision: Decision) -> Contact:
        if contact.chosen_local is None or decision.number is None:
            return contact
        zones = self.schedule.zones_for(E164.trusted(decision.number), contact.client_tz)
        at = self.schedule.next_chosen(contact.chosen_local, contact.at, zones)
        return replace(contact, preferred_at=at, time_chosen=True, chosen_local=None)

    def _contact_values(self, contact: Contact, decision: Decision) -> dict[str, Any]:
        pbx, source, ref = self._key(contact)
        return {
            "pbx": pbx,
            "source": source,
            "source_ref": ref,
            "raw_number": contact.raw_number[:64],
            "number": decision.number,
            "name": decision.name,
            "reason": contact.reason,
            "waited": contact.waited,
            "comment": contact.comment[:2000],
            "at": contact.at,
            "disposition": decision.disposition.value,
            "detail": decision.detail[:120],
            "request_id": None,
        }

    async def _open_new(self, s: AsyncSession, contact: Contact, decision: Decision) -> m.Request:
        """A new request for the contact, flushed (its id is the contact row's request_id)."""
        req = self._new_request(contact, decision)
        s.add(req)
        await s.flush()
        _log_plan(req.id, req.number, self._plan_of(req), req.client_zones or ())
        return req

    def _merge(self, req: m.Request, contact: Contact, decision: Decision) -> None:
        """The contact joins the number's open request."""
        req.contact_count += 1
        if contact.source.value not in req.sources:
            req.sources = [*req.sources, contact.source.value]
        if not req.name and decision.name:
            req.name = decision.name
        if contact.comment:
            req.note = (req.note + "\n" + contact.comment).strip()[:4000]
        if contact.did:
            req.did = contact.did[:64]  # the number they dialled last
        if contact.queue:
            req.queue = contact.queue[:64]  # the queue they waited in last
        req.updated_at = contact.at
        if req.status == RequestStatus.OPEN:  # a request being dialled gets its due at the end
            req.due_at = self.schedule.merged_due(
                req.due_at,
                contact.at,
                contact.preferred_at,
                spread_key=str(decision.number),
                client_zones=req.client_zones or (),
                kept_choice=req.time_chosen,
                new_choice=contact.time_chosen,
                queue=req.queue,
            )
            if contact.time_chosen and contact.preferred_at is not None:
                req.preferred_at, req.time_chosen = contact.preferred_at, True

    async def has_open_request(self, number: str, s: AsyncSession | None = None) -> bool:
        """Whether a contact for ``number`` would merge rather than open a new request."""
        if s is None:
            async with self.session() as s:
                return await self.has_open_request(number, s)
        found = await s.execute(
            select(m.Request.id)
            .where(m.Request.number == number, m.Request.status.in_(OPEN_STATUSES))
            .limit(1)
        )
        return found.first() is not None

    @staticmethod
    def _plan_of(req: m.Request) -> Plan:
        return Plan(req.due_at, Wait(req.wait_reason) if req.wait_reason else None, req.close_reason)

    def _new_request(self, contact: Contact, decision: Decision) -> m.Request:
        assert decision.number is not None
        zones = self.schedule.zones_for(E164.trusted(decision.number), contact.client_tz)
        plan = self.schedule.plan(
            0,
            None,
            contact.at,
            preferred_at=contact.preferred_at,
            spread_key=str(decision.number),
            client_zones=zones,
            queue=contact.queue,
        )
        due = plan.due
        status = RequestStatus.OPEN if due is not None else _CLOSED_BY[plan.close_reason or "max_age"]
        return m.Request(
            number=str(decision.number),
            name=decision.name,
            reason=contact.reason,
            sources=[contact.source.value],
            contact_count=1,
            status=status.value,
            created_at=contact.at,
            updated_at=contact.at,
            due_at=due,
            preferred_at=contact.preferred_at,
            attempts_made=0,
            operator_tries=0,
            note=contact.comment[:4000],
            closed_at=None if due is not None else contact.at,
            close_reason=None if due is not None else plan.close_reason,
            client_zones=list(zones),
            wait_reason=plan.wait.value if plan.wait and due is not None else None,
            time_chosen=contact.time_chosen and contact.preferred_at is not None,
            did=contact.did[:64] or None,
            queue=contact.queue,
        )

    def call_row(self, call: CallTrack, number: str | None) -> dict[str, Any]:
        """The calls row of *call*, for :meth:`insert_calls`."""
        return {
            "pbx": self.pbx,
            "linkedid": call.linkedid,
            "caller_num": call.caller_num[:64],
            "number": number,
            # Shown in reports and exports: letters, digits and plain punctuation only.
            "caller_name": sanitize_caller_name(call.caller_name, 80),
            "did": call.did[:64],
            "queue": call.queue,
            "started_at": call.started_at,
            "joined_at": call.joined_at,
            "answered_at": call.answered_at,
            "ended_at": call.ended_at,
            "hold_time": call.hold_time,
            "agent": call.agent,
            "outcome": "answered" if call.answered else "missed",
            "miss_reason": call.missed.value if call.missed else None,
            "node": self.node,
        }

    async def insert_calls(self, s: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """Insert call rows in *s*'s transaction; a call already stored (seen again after a
        reconnect) is skipped, so this never aborts the transaction it is part of."""
        if not rows:
            return
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        # The table, not the mapped class: the ORM's bulk insert would split the rows into runs of
        # the same non-NULL columns, a statement each; this is one executemany for them all.
        stmt = dialect_insert(m.Call.__table__).on_conflict_do_nothing(index_elements=["pbx", "linkedid"])
        await s.execute(stmt, rows)

    async def record_call(self, call: CallTrack, number: str | None) -> None:
        async with self.session() as s, s.begin():
            await self.insert_calls(s, [self.call_row(call, number)])

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[AsyncSession]:
        """One transaction for several intake items (the intake writer's group commit): pass the
        session to the methods that take one; committed at the end, rolled back on any error."""
        async with self.session() as s, s.begin():
            yield s

    def batch(self, s: AsyncSession) -> IntakeBatch:
        """The intake items of one :meth:`unit`, written with a few statements per batch."""
        return IntakeBatch(self, s)

    async def recover(self, number: str, now: datetime, how: str, s: AsyncSession | None = None) -> list[int]:
        """Close the number's open request: the client was reached another way."""
        if s is None:
            async with self.session() as s, s.begin():
                return await self.recover(number, now, how, s)
        reqs = (await s.execute(_OPEN_REQUESTS, {"number": number})).scalars().all()
        for req in reqs:
            _apply(req, RequestEvent.RECOVER, now)
            req.close_reason = how
        return [r.id for r in reqs]

    # -- dialer ----------------------------------------------------------------------

    def _age_from(self):
        return func.coalesce(m.Request.age_from, m.Request.created_at)

    async def claim_due(
        self,
        now: datetime,
        limit: int,
        exclude_numbers: Sequence[str] = (),
        *,
        queues: Collection[str] | None = None,
        unserved: Collection[str] | None = None,
        take: Callable[[str | None], bool] | None = None,
    ) -> list[m.Request]:
        """Take up to *limit* due requests for this node; safe with several daemons.

        Each claim gets a new token. A request older than max_age is never claimed, nor one
        whose number has an attempt in flight on any node (a cancel and retry while it rang).
        With ``queues``, only requests of those queues, plus, when ``unserved`` (the served
        queues) is given, those whose queue is none of ``unserved`` (see domain/routing.py).
        ``take(queue)``, asked oldest first, may pass a request over (no operator left for its queue).
        """
        if limit <= 0:
            return []
        busy = (
            select(m.Attempt.id)
            .where(m.Attempt.number == m.Request.number, m.Attempt.status.in_(_IN_FLIGHT))
            .exists()
        )
        async with self.session() as s, s.begin():
            q = (
                select(m.Request.id, m.Request.client_zones, m.Request.queue)
                .where(
                    m.Request.status == RequestStatus.OPEN.value,
                    m.Request.due_at <= now,
                    self._age_from() >= now - self.schedule.max_age,
                    ~busy,
                )
                .order_by(m.Request.due_at)
                # Room for the requests ``take`` passes over; what is left waits for the next turn.
                .limit((limit + len(exclude_numbers)) * (1 if take is None else 4))
                .with_for_update(skip_locked=True)
            )
            if exclude_numbers:
                q = q.where(m.Request.number.not_in(list(exclude_numbers)))
            if queues is not None:
                wanted = m.Request.queue.in_(sorted(queues))
                if unserved is not None:
                    wanted = or_(wanted, m.Request.queue.is_(None), m.Request.queue.not_in(sorted(unserved)))
                q = q.where(wanted)
            ids = []
            for rid, zones, queue in (await s.execute(q)).all():
                if len(ids) >= limit:
                    break
                if not self.schedule.hours_for(zones or (), queue).is_open(now):
                    # Due in the client's day (or the queue's hours) but not dialled before it
                    # ended (no free operator): wait for the next opening.
                    await self._defer_to_client_hours(s, rid, zones or [], now, queue)
                    continue
                if take is not None and not take(queue):
                    continue
                ids.append(rid)
            claimed: list[m.Request] = []
            for rid in ids:
                res = await s.execute(
                    update(m.Request)
                    .where(m.Request.id == rid, m.Request.status == RequestStatus.OPEN.value)
                    .values(
                        status=request_transition(RequestStatus.OPEN, RequestEvent.CLAIM).value,
                        claimed_by=self.node,
                        claim_expires=now + self.claim_lease,
                        claim_token=uuid.uuid4().hex,
                        updated_at=now,
                    )
                )
                if res.rowcount == 1:
                    claimed.append(await s.get(m.Request, rid, populate_existing=True))
            return claimed

    async def _defer_to_client_hours(
        self, s: AsyncSession, rid: int, zones: list[str], now: datetime, queue: str | None = None
    ) -> None:
        req = await s.get(m.Request, rid)
        assert req is not None
        plan = self.schedule.next_callable(now, zones, queue)
        if plan.due is None:
            _apply(req, RequestEvent.FAIL, now)
            req.close_reason = plan.close_reason
        else:
            req.due_at = plan.due
            req.wait_reason = plan.wait.value if plan.wait else None
            req.updated_at = now
        _log_plan(req.id, req.number, plan, zones)

    async def choose_time(self, request_id: int, wall: datetime, now: datetime) -> m.Request:
        """The client asked to be called at ``wall`` (their local time unless it carries a zone).

        Kept against later contacts; fitted into business and client hours like any due time.
        Raises ValueError when that time is past or the client can never be called.
        """
        async with self.session() as s, s.begin():
            req = await s.get(m.Request, request_id, with_for_update=True)
            if req is None:
                raise NotFound(f"no request {request_id}")
            if req.status != RequestStatus.OPEN:
                raise ValueError(f"request {request_id} is {req.status}; only an open request takes a time")
            zones = req.client_zones or ()
            at = self.schedule.chosen_instant(wall, zones)
            if at < now:
                raise ValueError(f"{at.isoformat()} is in the past")
            plan = self.schedule.next_callable(at, zones, req.queue)
            if plan.due is None:
                raise ValueError("the client's hours never meet the business hours")
            req.preferred_at, req.time_chosen, req.updated_at = at, True, now
            req.due_at = plan.due
            req.wait_reason = (Wait.CHOSEN_TIME if plan.due == at else plan.wait or Wait.CHOSEN_TIME).value
            _log_plan(req.id, req.number, Plan(req.due_at, Wait(req.wait_reason)), zones)
            return req

    async def unclaim(
        self, request_id: int, now: datetime, due_at: datetime | None = None, *, token: str | None
    ) -> bool:
        """Give a claimed request back without an attempt, if the claim is still ours."""
        async with self.session() as s, s.begin():
            req = await s.get(m.Request, request_id, with_for_update=True)
            if req is None or req.status != RequestStatus.DIALLING or req.claim_token != token:
                return False
            _apply(req, RequestEvent.RETRY_LATER, now)
            if due_at is not None:
                req.due_at = due_at
            return True

    async def start_attempt(
        self, request_id: int, operator: str, now: datetime, *, token: str | None
    ) -> m.Attempt:
        """Written before the Originate is sent: a crash after this is reconciled, never redialled.

        The hours are checked again here, at the time the attempt is stamped with: the claim
        may have been taken just before they ended. Then the request goes back to wait for its
        next opening and :class:`OutsideHours` is raised.
        """
        async with self.session() as s, s.begin():
            req = await s.get(m.Request, request_id, with_for_update=True)
            if req is None or req.status != RequestStatus.DIALLING or req.claim_token != token:
                raise NotFound(f"request {request_id} is not claimed by this claim")
            if not self.schedule.hours_for(req.client_zones or (), req.queue).is_open(now):
                _apply(req, RequestEvent.RETRY_LATER, now)
                await self._defer_to_client_hours(s, request_id, req.client_zones or [], now, req.queue)
                row: m.Attempt | None = None
            else:
                row = self._attempt_row(req, operator, now, token)
                s.add(row)
        if row is None:  # raised after the commit, so the deferral is kept
            raise OutsideHours(f"request {request_id}: its hours ended before the attempt")
        return row

    def _attempt_row(self, req: m.Request, operator: str, now: datetime, token: str | None) -> m.Attempt:
        attempt_id = uuid.uuid4().hex
        return m.Attempt(
            id=attempt_id,
            request_id=req.id,
            try_no=req.attempts_made + 1,
            operator=operator,
            channel_id=f"{CALLBACK_CHANNEL_PREFIX}{attempt_id}",
            number=req.number,
            status=AttemptStatus.DIALLING.value,
            counted=False,
            started_at=now,
            node=self.node,
            claim_token=token,
            lease_until=now + self.attempt_lease,
            pbx=self.pbx,
        )

    async def mark_attempt(self, attempt_id: str, status: AttemptStatus, **fields: object) -> bool:
        """Store an attempt's progress. False when its request no longer wants the call
        (cancelled, recovered, or claimed anew): the caller should hang up."""
        async with self.session() as s, s.begin():
            att = await s.get(m.Attempt, attempt_id, with_for_update=True)
            if att is None or att.status == AttemptStatus.DONE:
                return False
            att.status = status.value
            for key, value in fields.items():
                setattr(att, key, value)
            req = await s.get(m.Request, att.request_id)
            return req is not None and req.status in OPEN_STATUSES and req.claim_token == att.claim_token

    async def renew_leases(self, now: datetime) -> int:
        """This node still follows its attempts: push their leases on."""
        async with self.session() as s, s.begin():
            res = await s.execute(
                update(m.Attempt)
                .where(m.Attempt.node == self.node, m.Attempt.status.in_(_IN_FLIGHT))
                .values(lease_until=now + self.attempt_lease)
            )
            return res.rowcount or 0

    async def finish_attempt(
        self,
        attempt_id: str,
        outcome: Outcome,
        now: datetime,
        *,
        failover: OperatorFailover,
        **fields: object,
    ) -> Finished | None:
        """Store the outcome and apply the retry policy to the request. Idempotent.

        The request moves only while its claim token is the attempt's: a stale node's
        outcome is kept on its attempt row and never reopens or closes a request that
        another claim now holds.
        """
        async with self.session() as s, s.begin():
            att = await s.get(m.Attempt, attempt_id, with_for_update=True)
            if att is None or att.status == AttemptStatus.DONE:
                return None
            req = await s.get(m.Request, att.request_id, with_for_update=True)
            assert req is not None
            step = next_step(outcome, _snapshot(req), att.started_at, now, self.schedule, failover)
            att.status = attempt_transition(att.status, AttemptEvent.FINISHED).value
            att.outcome = outcome.value
            att.counted = step.counted
            att.ended_at = now
            for key, value in fields.items():
                setattr(att, key, value)
            if step.counted:
                req.attempts_made = step.attempts_made  # the client was rung, whoever holds it
            held = req.claim_token == att.claim_token
            if held and req.status == RequestStatus.OPEN:
                # An admin cancelled and retried it while this attempt rang: it is still ours.
                _apply(req, RequestEvent.CLAIM, now)
            if not held or req.status != RequestStatus.DIALLING:
                # Recovered, cancelled or claimed anew while the attempt rang: keep that.
                return Finished(
                    req.id, req.status, outcome, step.counted, req.due_at, req.close_reason, stale=True
                )
            req.operator_tries = step.operator_tries
            req.last_attempt_at = step.last_attempt_at
            _apply(req, step.event, now)
            if step.event is RequestEvent.RETRY_LATER:
                req.due_at = step.due_at
                req.wait_reason = step.plan.wait.value if step.plan.wait else None
                _log_plan(req.id, req.number, step.plan, req.client_zones or ())
            if step.close_reason is not None:
                req.close_reason = step.close_reason
            return Finished(req.id, req.status, outcome, step.counted, req.due_at, req.close_reason)

    async def in_flight(self, now: datetime) -> list[m.Attempt]:
        """Attempts to reconcile: this node's own, and those on the same PBX whose node let the
        lease run out (dead, or cut off from the database)."""
        async with self.session() as s:
            rows = await s.execute(
                select(m.Attempt).where(
                    m.Attempt.status.in_(_IN_FLIGHT),
                    (m.Attempt.node == self.node)
                    | (
                        (m.Attempt.pbx == self.pbx)
                        & (func.coalesce(m.Attempt.lease_until, m.Attempt.started_at) < now)
                    ),
                )
            )
            return list(rows.scalars())

    async def take_over(self, attempt_id: str, now: datetime) -> bool:
        """Make a dead node's attempt this node's, once; False if another node took it first."""
        async with self.session() as s, s.begin():
            res = await s.execute(
                update(m.Attempt)
                .where(
                    m.Attempt.id == attempt_id,
                    m.Attempt.status.in_(_IN_FLIGHT),
                    (m.Attempt.node == self.node)
                    | (func.coalesce(m.Attempt.lease_until, m.Attempt.started_at) < now),
                )
                .values(node=self.node, lease_until=now + self.attempt_lease)
            )
            return res.rowcount == 1

    async def release_stale_claims(self, now: datetime) -> int:
        """Requests a dead daemon claimed and never started an attempt for go back to open."""
        async with self.session() as s, s.begin():
            reqs = (
                (
                    await s.execute(
                        select(m.Request)
                        .where(
                            m.Request.status == RequestStatus.DIALLING.value, m.Request.claim_expires < now
                        )
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            for req in reqs:
                live = (
                    await s.execute(
                        select(func.count())
                        .select_from(m.Attempt)
                        .where(m.Attempt.request_id == req.id, m.Attempt.status.in_(_IN_FLIGHT))
                    )
                ).scalar_one()
                if live == 0:
                    _apply(req, RequestEvent.RETRY_LATER, now)
                    req.due_at = now
            return len(reqs)

    async def expire_old(self, now: datetime) -> int:
        cutoff = now - self.schedule.max_age
        async with self.session() as s, s.begin():
            reqs = (
                (
                    await s.execute(
                        select(m.Request)
                        .where(m.Request.status == RequestStatus.OPEN.value, self._age_from() < cutoff)
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            for req in reqs:
                _apply(req, RequestEvent.EXPIRE, now)
                req.close_reason = "max_age"
            return len(reqs)

    async def next_due(self) -> datetime | None:
        async with self.session() as s:
            return (
                await s.execute(
                    select(func.min(m.Request.due_at)).where(m.Request.status == RequestStatus.OPEN.value)
                )
            ).scalar_one()

    # -- admin -----------------------------------------------------------------------

    async def list_requests(
        self,
        status: str | None = None,
        limit: int = 200,
        *,
        number: str | None = None,
        before: int | None = None,
    ) -> list[m.Request]:
        """Newest first; *before* (a request id) pages on from the last one seen."""
        async with self.session() as s:
            q = select(m.Request).order_by(m.Request.id.desc()).limit(limit)
            if status:
                q = q.where(m.Request.status == status)
            if number:
                q = q.where(m.Request.number == number)
            if before is not None:
                q = q.where(m.Request.id < before)
            return list((await s.execute(q)).scalars())

    async def get_request(self, request_id: int) -> tuple[m.Request, list[m.Attempt], list[m.Contact]]:
        async with self.session() as s:
            req = await s.get(m.Request, request_id)
            if req is None:
                raise NotFound(f"no request {request_id}")
            attempts = (
                await s.execute(
                    select(m.Attempt).where(m.Attempt.request_id == request_id).order_by(m.Attempt.started_at)
                )
            ).scalars()
            contacts = (
                await s.execute(
                    select(m.Contact).where(m.Contact.request_id == request_id).order_by(m.Contact.at)
                )
            ).scalars()
            return req, list(attempts), list(contacts)

    async def audit_trail(self, request_id: int) -> list[m.AuditEntry]:
        async with self.session() as s:
            q = select(m.AuditEntry).where(m.AuditEntry.request_id == request_id).order_by(m.AuditEntry.id)
            return list((await s.execute(q)).scalars())

    async def admin_event(
        self,
        request_id: int,
        event: RequestEvent,
        now: datetime,
        *,
        at: datetime | None = None,
        actor: str | None = None,
    ) -> m.Request:
        """Cancel, retry now or schedule (*at*) by hand; with an *actor*, written to the audit log too.

        The change and its audit entry share one transaction: neither is stored without the other.
        """
        if event is RequestEvent.SCHEDULE and at is None:
            raise ValueError("a schedule needs a time")
        async with self.session() as s, s.begin():
            req = await s.get(m.Request, request_id, with_for_update=True)
            if req is None:
                raise NotFound(f"no request {request_id}")
            reopens = event in (RequestEvent.RETRY_NOW, RequestEvent.SCHEDULE)
            if reopens and req.status not in OPEN_STATUSES:
                other = (
                    await s.execute(
                        select(m.Request.id).where(
                            m.Request.number == req.number,
                            m.Request.status.in_(OPEN_STATUSES),
                            m.Request.id != req.id,
                        )
                    )
                ).scalar()
                if other is not None:
                    raise NumberHasOpenRequest(req.id, req.status, other)
            before = req.status
            _apply(req, event, now)
            if event is RequestEvent.CANCEL:
                req.close_reason = "cancelled"
            if event is RequestEvent.RETRY_NOW:
                if self.schedule.is_expired(req.age_from or req.created_at, now):
                    req.age_from = now  # an admin's retry gives an expired request a new age
                req.due_at = now
                req.close_reason = None
            if event is RequestEvent.SCHEDULE:
                req.due_at = req.preferred_at = at
                req.close_reason = None
            if actor is not None:
                detail: dict[str, object] = {"from": before, "to": req.status}
                if at is not None:
                    detail["at"] = at.isoformat()
                s.add(m.AuditEntry(at=now, actor=actor, action=event.value, request_id=req.id, detail=detail))
            return req

    async def annotate(
        self, request_id: int, what: str, value: str, now: datetime, *, actor: str
    ) -> m.Request:
        """A note (appended, signed) or a disposition (replaced) by hand; audited in the same transaction."""
        async with self.session() as s, s.begin():
            req = await s.get(m.Request, request_id, with_for_update=True)
            if req is None:
                raise NotFound(f"no request {request_id}")
            if what == "note":
                line = f"[{now:%Y-%m-%d %H:%M} {actor}] {value}"
                req.note = (req.note + "\n" + line).strip()[-4000:]
            else:
                req.disposition = value
            req.updated_at = now
            s.add(m.AuditEntry(at=now, actor=actor, action=what, request_id=req.id, detail={"value": value}))
            return req

    async def counts_by_status(self) -> dict[str, int]:
        async with self.session() as s:
            rows = await s.execute(select(m.Request.status, func.count()).group_by(m.Request.status))
            return {status: n for status, n in rows}


class IntakeBatch:
    """The intake writer's group commit, written with a few statements per batch, not per item.

    What the items ask of the database is read once for the whole batch (:meth:`prefetch`: the
    contacts already stored, the open request of each number, locked), then kept here as the
    items change it, in order: a contact merges into the request an earlier item of the batch
    opened, a recovery closes it, a contact seen twice is stored once. Contact and call rows go
    in by one INSERT each at :meth:`finish`, before the commit; requests stay ORM rows, so the
    webhook outbox sees their changes. With webhook endpoints, each item's request change is
    flushed on its own, so each makes its own events, in the order of the items.
    """

    def __init__(self, store: Store, s: AsyncSession) -> None:
        self.store = store
        self.s = s
        self._open: dict[str, m.Request | None] = {}  # number -> its open request (None: none)
        self._seen: dict[tuple[str, str, str], _Stored] = {}  # contacts stored, or to be, by key
        self._seen_read: set[tuple[str, str, str]] = set()  # keys the database was asked about
        self._rows: list[dict[str, Any]] = []
        self._new: list[_Stored] = []
        self._calls: list[dict[str, Any]] = []
        outbox = store.outbox
        self._each = bool(outbox is not None and getattr(outbox, "endpoints", ()))

    async def prefetch(self, numbers: Collection[str], contacts: Collection[Contact]) -> None:
        """Read what the batch's items will ask: one SELECT for the open requests of *numbers*
        (locked, in id order), one per (pbx, source) for which of *contacts* are stored already."""
        wanted = sorted({n for n in numbers if n not in self._open})
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            reqs = (
                await self.s.execute(
                    select(m.Request)
                    .where(m.Request.number.in_(part), m.Request.status.in_(OPEN_STATUSES))
                    .order_by(m.Request.id)
                    .with_for_update()
                )
            ).scalars()
            for req in reqs:
                self._open[req.number] = req
            for n in part:
                self._open.setdefault(n, None)
        groups: dict[tuple[str, str], set[str]] = {}
        for c in contacts:
            key = self.store._key(c)
            if key not in self._seen_read:
                self._seen_read.add(key)
                groups.setdefault(key[:2], set()).add(key[2])
        for (pbx, source), refs in groups.items():
            ordered = sorted(refs)
            for i in range(0, len(ordered), 500):
                found = await self.s.execute(
                    select(m.Contact.source_ref, m.Contact.id, m.Contact.request_id).where(
                        m.Contact.pbx == pbx,
                        m.Contact.source == source,
                        m.Contact.source_ref.in_(ordered[i : i + 500]),
                    )
                )
                for ref, cid, rid in found:
                    self._seen[(pbx, source, ref)] = _Stored(cid, rid)

    async def _request(self, number: str) -> m.Request | None:
        if number not in self._open:
            await self.prefetch([number], ())
        return self._open[number]

    async def has_open_request(self, number: str) -> bool:
        """As :meth:`Store.has_open_request`, with this batch's earlier items counted."""
        return await self._request(number) is not None

    async def record_contact(self, contact: Contact, decision: Decision) -> Callable[[], ContactResult]:
        """As :meth:`Store.record_contact`; the result (with its ids) is known after :meth:`finish`."""
        store, s = self.store, self.s
        contact = store._with_chosen_time(contact, decision)
        key = store._key(contact)
        if key not in self._seen_read:
            await self.prefetch((), [contact])
        seen = self._seen.get(key)
        if seen is not None:
            return lambda: ContactResult(seen.id, seen.request_id, duplicate=True)
        values = store._contact_values(contact, decision)
        created = merged = False
        if decision.schedules and decision.number is not None:
            number = str(decision.number)
            req = await self._request(number)
            if req is None:
                req = await store._open_new(s, contact, decision)
                self._open[number] = req if req.status in OPEN_STATUSES else None
                created = True
            else:
                store._merge(req, contact, decision)
                merged = True
                if self._each:
                    await s.flush()
            values["request_id"] = req.id
        stored = _Stored(None, values["request_id"])
        self._seen[key] = stored
        self._rows.append(values)
        self._new.append(stored)
        disposition = decision.disposition
        return lambda: ContactResult(
            stored.id, stored.request_id, created=created, merged=merged, disposition=disposition
        )

    async def recover(self, number: str, now: datetime, how: str) -> list[int]:
        """As :meth:`Store.recover`."""
        req = await self._request(number)
        if req is None:
            return []
        _apply(req, RequestEvent.RECOVER, now)
        req.close_reason = how
        self._open[number] = None
        if self._each:
            await self.s.flush()
        return [req.id]

    def add_call(self, row: dict[str, Any]) -> None:
        """A row from :meth:`Store.call_row`, inserted at :meth:`finish`."""
        self._calls.append(row)

    async def finish(self) -> None:
        """Write what the items left to write; the caller commits."""
        await self.s.flush()
        if self._rows:
            # Each id found by its row's key (unique in the batch): RETURNING in the rows' order
            # would make SQLAlchemy insert them one statement a row on SQLite (no sentinel there).
            t = m.Contact.__table__
            stmt = insert(t).returning(t.c.pbx, t.c.source, t.c.source_ref, t.c.id)
            found = await self.s.execute(stmt, self._rows)
            ids = {(pbx, source, ref): cid for pbx, source, ref, cid in found}
            for stored, row in zip(self._new, self._rows, strict=True):
                stored.id = ids[(row["pbx"], row["source"], row["source_ref"])]
            self._rows, self._new = [], []
        await self.store.insert_calls(self.s, self._calls)
        self._calls = []


@dataclass
class _Stored:
    id: int | None
    request_id: int | None


# A request closed at birth: too old already, or the client's hours never meet ours.
_CLOSED_BY = {"max_age": RequestStatus.EXPIRED, "no_common_hours": RequestStatus.FAILED}
_IN_FLIGHT = [a.value for a in IN_FLIGHT_ATTEMPTS]


def _snapshot(req: m.Request) -> RequestSnapshot:
    return RequestSnapshot(
        number=req.number,
        attempts_made=req.attempts_made,
        operator_tries=req.operator_tries,
        last_attempt_at=req.last_attempt_at,
        age_from=req.age_from or req.created_at,
        client_zones=tuple(req.client_zones or ()),
        queue=req.queue,
    )
