"""Webhooks: events written to a database outbox in the transaction that caused them, then delivered.

Capture: a listener on the store's sessions turns what a flush changes (a new request, a
merge, an attempt started or finished, a request reached or closed) into outbox rows, one
per subscribed endpoint, inserted on the same connection before the commit. So an event is
stored exactly when its change is, whichever store method made it, and survives a crash.

Delivery: :class:`Dispatcher` sends the oldest pending row of each (endpoint, request) pair,
so one request's events arrive in order; rows of different requests go out concurrently.
A row is claimed by moving its ``due_at`` past the send (another daemon skips it; a crash
mid-send makes it due again). A failure backs off exponentially from ``backoff_min`` to
``backoff_max``, stored in the row, so retries continue across restarts; after ``max_tries``
the row is dead (``callbackd webhooks list --status dead``, ``retry``), and the request's later
events go on without it.

Generic endpoints get JSON signed with HMAC-SHA256 over ``"{timestamp}.{body}"`` (headers
``X-Callbackd-Signature: v1=<hex>``, ``X-Callbackd-Timestamp``); ``X-Callbackd-Delivery`` is the
row id, the same on every retry, so a receiver can drop a repeat (delivery is at least once:
an answer slower than ``timeout`` is sent again). Bitrix24 endpoints get its REST calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import and_, event, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import get_history

from callbackd.adapters import models as m
from callbackd.domain.states import CLOSED_STATUSES, RequestStatus

log = structlog.get_logger("callbackd.webhooks")

EVENTS = (
    "request.created",
    "request.merged",
    "attempt.started",
    "attempt.outcome",
    "request.reached",
    "request.closed",
)
BITRIX_EVENTS = frozenset({"request.created", "request.closed"})
CLOSED = frozenset(s.value for s in CLOSED_STATUSES)


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    kind: str = "generic"
    secret: bytes = b""
    events: frozenset[str] = frozenset(EVENTS)
    bitrix_user_id: int = 1

    def wants(self, name: str) -> bool:
        if self.kind == "bitrix24":
            return name in self.events and name in BITRIX_EVENTS
        return name in self.events


@dataclass(frozen=True)
class Policy:
    timeout: float = 10.0
    backoff_min: float = 10.0
    backoff_max: float = 3600.0
    max_tries: int = 30
    poll_interval: float = 1.0
    concurrency: int = 8

    def delay(self, tries: int) -> float:
        """Seconds before try *tries* + 1: doubling from backoff_min, capped at backoff_max."""
        return min(self.backoff_max, self.backoff_min * 2 ** min(tries - 1, 40))


def from_config(cfg: Any) -> tuple[list[Endpoint], Policy]:
    w = cfg.webhooks
    endpoints = [
        Endpoint(e.name, e.url, e.kind, e.secret_value().encode(), frozenset(e.events), e.bitrix_user_id)
        for e in w.endpoints
    ]
    policy = Policy(
        timeout=w.timeout.total_seconds(),
        backoff_min=w.backoff_min.total_seconds(),
        backoff_max=w.backoff_max.total_seconds(),
        max_tries=w.max_tries,
        poll_interval=w.poll_interval.total_seconds(),
        concurrency=w.concurrency,
    )
    return endpoints, policy


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return "v1=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


# -- capture --------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def request_payload(r: m.Request) -> dict[str, Any]:
    return {
        "id": r.id,
        "number": r.number,
        "name": r.name,
        "status": r.status,
        "reason": r.reason,
        "sources": list(r.sources or []),
        "contacts": r.contact_count,
        "attempts": r.attempts_made,
        "created_at": _iso(r.created_at),
        "due_at": _iso(r.due_at),
        "closed_at": _iso(r.closed_at),
        "close_reason": r.close_reason,
    }


def attempt_payload(a: m.Attempt) -> dict[str, Any]:
    return {
        "id": a.id,
        "try_no": a.try_no,
        "operator": a.operator,
        "outcome": a.outcome,
        "counted": a.counted,
        "started_at": _iso(a.started_at),
        "ended_at": _iso(a.ended_at),
        "talk_seconds": a.talk_seconds,
    }


def _changed(obj: Any, attr: str) -> tuple[Any, Any] | None:
    """(old, new) when the flush changes *attr*, else None."""
    h = get_history(obj, attr)
    if not h.added:
        return None
    return (h.deleted[0] if h.deleted else None), h.added[0]


def events_of_flush(session: Session) -> list[tuple[str, int, dict[str, Any]]]:
    """(event, request id, payload) for what this flush changed, in the order a receiver should see."""
    now = datetime.now(UTC)
    out: list[tuple[str, int, dict[str, Any]]] = []
    new, dirty = list(session.new), list(session.dirty)
    requests_changed = [o for o in dirty if isinstance(o, m.Request)]
    for obj in new:
        if isinstance(obj, m.Request):
            out.append(("request.created", obj.id, {"request": request_payload(obj)}))
    for req in requests_changed:
        count = _changed(req, "contact_count")
        if count and (count[0] or 0) < count[1]:
            out.append(("request.merged", req.id, {"request": request_payload(req)}))
    for obj in new:
        if isinstance(obj, m.Attempt):
            out.append(("attempt.started", obj.request_id, {"attempt": attempt_payload(obj)}))
    for obj in dirty:
        if isinstance(obj, m.Attempt):
            outcome = _changed(obj, "outcome")
            if outcome and outcome[1] is not None and outcome[0] is None:
                out.append(("attempt.outcome", obj.request_id, {"attempt": attempt_payload(obj)}))
    for req in [o for o in new if isinstance(o, m.Request)] + requests_changed:
        status = _changed(req, "status")
        if req in new:
            status = (None, req.status)
        if not status or status[0] == status[1]:
            continue
        if status[1] == RequestStatus.REACHED.value:
            out.append(("request.reached", req.id, {"request": request_payload(req)}))
        if status[1] in CLOSED:
            out.append(("request.closed", req.id, {"request": request_payload(req)}))
    for name, _rid, payload in out:
        payload["event"] = name
        payload["occurred_at"] = now.isoformat()
    return out


class Outbox:
    """Attach to a store's sessions: every flush that changes requests or attempts writes its events."""

    def __init__(self, endpoints: Iterable[Endpoint], policy: Policy | None = None) -> None:
        self.endpoints = tuple(endpoints)
        self.policy = policy or Policy()

    def attach(self, session: Any) -> Any:
        """*session* is an AsyncSession; returns it."""
        if self.endpoints:
            event.listen(session.sync_session, "after_flush", self._after_flush)
        return session

    def _after_flush(self, session: Session, _context: Any) -> None:
        found = events_of_flush(session)
        if not found:
            return
        now = datetime.now(UTC)
        rows = [
            {
                "endpoint": e.name,
                "event": name,
                "request_id": rid,
                "payload": payload,
                "created_at": now,
                "status": "pending",
                "due_at": now,
                "tries": 0,
                "last_error": "",
                "ref": "",
            }
            for name, rid, payload in found
            for e in self.endpoints
            if e.wants(name)
        ]
        if rows:
            # Core on the flush's own connection: same transaction, and legal inside a flush.
            session.connection().execute(insert(m.OutboxEvent), rows)


# -- delivery -------------------------------------------------------------------------------


class Rejected(Exception):
    """The endpoint did not take the event (the message says why, in one line)."""


@dataclass
class Dispatcher:
    engine: AsyncEngine
    endpoints: tuple[Endpoint, ...]
    policy: Policy
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    delivered: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        from callbackd.adapters.db import sessionmaker

        self._session = sessionmaker(self.engine)
        self._by_name = {e.name: e for e in self.endpoints}
        self._http = httpx.AsyncClient(timeout=self.policy.timeout, follow_redirects=False)

    def start(self) -> None:
        if self.endpoints:
            self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = await self.run_once()
            except Exception as exc:  # a database outage: try again on the next round
                log.warning("webhooks.poll_failed", error=str(exc).splitlines()[0][:200])
                sent = 0
            if sent == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.policy.poll_interval)
                self.wake.clear()

    async def run_once(self) -> int:
        """Claim and send one round of heads of line; returns how many were tried."""
        rows = await self._claim()
        if rows:
            outcomes = await asyncio.gather(*(self._send(r) for r in rows))
            async with self._session() as s, s.begin():  # one commit per round, not per event
                for row, values in zip(rows, outcomes, strict=True):
                    await s.execute(update(m.OutboxEvent).where(m.OutboxEvent.id == row.id).values(**values))
        return len(rows)

    async def _claim(self) -> list[m.OutboxEvent]:
        now = self.clock()
        earlier = aliased(m.OutboxEvent)
        head = ~exists().where(
            earlier.status == "pending",
            earlier.endpoint == m.OutboxEvent.endpoint,
            earlier.request_id == m.OutboxEvent.request_id,
            earlier.id < m.OutboxEvent.id,
        )
        q = (
            select(m.OutboxEvent)
            .where(
                m.OutboxEvent.status == "pending",
                m.OutboxEvent.due_at <= now,
                m.OutboxEvent.endpoint.in_(list(self._by_name)),
                head,
            )
            .order_by(m.OutboxEvent.id)
            .limit(self.policy.concurrency)
        )
        lease = now + timedelta(seconds=self.policy.timeout * 3 + 5)
        claimed = []
        async with self._session() as s, s.begin():
            for row in (await s.execute(q)).scalars().all():
                done = await s.execute(
                    update(m.OutboxEvent)
                    .where(and_(m.OutboxEvent.id == row.id, m.OutboxEvent.due_at == row.due_at))
                    .values(due_at=lease)
                )
                if done.rowcount == 1:  # another daemon did not take it first
                    claimed.append(row)
        return claimed

    async def _send(self, row: m.OutboxEvent) -> dict[str, Any]:
        """Send one event; returns the row's new values (written by the caller with the round's others)."""
        endpoint = self._by_name[row.endpoint]
        try:
            if endpoint.kind == "bitrix24":
                ref = await self._bitrix(endpoint, row)
            else:
                await self._post(endpoint, row)
                ref = None
        except (Rejected, httpx.HTTPError) as exc:
            return self._failed(row, _one_line(exc))
        self.delivered += 1
        log.debug("webhooks.delivered", endpoint=row.endpoint, event_id=row.id, kind=row.event)
        return {"status": "delivered", "delivered_at": self.clock(), "tries": row.tries + 1, "ref": ref or ""}

    def _failed(self, row: m.OutboxEvent, why: str) -> dict[str, Any]:
        tries = row.tries + 1
        dead = tries >= self.policy.max_tries
        due = self.clock() + timedelta(seconds=self.policy.delay(tries))
        self.failed += 1
        log.info(
            "webhooks.dead" if dead else "webhooks.retry",
            endpoint=row.endpoint,
            event_id=row.id,
            tries=tries,
            error=why,
        )
        return {
            "status": "dead" if dead else "pending",
            "tries": tries,
            "due_at": due,
            "last_error": why[:300],
        }

    async def _post(self, endpoint: Endpoint, row: m.OutboxEvent) -> None:
        body = json.dumps({"delivery": row.id, **row.payload}, ensure_ascii=False, separators=(",", ":"))
        data = body.encode()
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "callbackd-webhooks",
            "X-Callbackd-Event": row.event,
            "X-Callbackd-Delivery": str(row.id),
            "X-Callbackd-Timestamp": str(ts),
            "X-Callbackd-Signature": sign(endpoint.secret, ts, data),
        }
        r = await self._http.post(endpoint.url, content=data, headers=headers)
        if not 200 <= r.status_code < 300:
            raise Rejected(f"HTTP {r.status_code}")

    # -- Bitrix24 --------------------------------------------------------------------------

    async def _bitrix(self, endpoint: Endpoint, row: m.OutboxEvent) -> str | None:
        """telephony.externalcall.register on a new request, .finish when it closes.

        The CALL_ID Bitrix24 answers is kept in the delivered row, so the finish can name it.
        """
        req = row.payload["request"]
        base = endpoint.url.rstrip("/") + "/"
        if row.event == "request.created":
            params = bitrix_register(req, endpoint.bitrix_user_id)
            answer = await self._bitrix_call(base + "telephony.externalcall.register.json", params)
            call_id = (answer.get("result") or {}).get("CALL_ID")
            if not call_id:
                raise Rejected("Bitrix24 answered no CALL_ID")
            return str(call_id)
        call_id = await self._registered(endpoint, row.request_id)
        if call_id is None:  # created before the endpoint was configured: nothing to finish
            return None
        params = bitrix_finish(
            req, call_id, endpoint.bitrix_user_id, await self._talk_seconds(row.request_id)
        )
        await self._bitrix_call(base + "telephony.externalcall.finish.json", params)
        return None

    async def _bitrix_call(self, url: str, params: dict[str, Any]) -> dict[str, Any]:
        r = await self._http.post(url, json=params)
        try:
            answer = r.json()
        except ValueError:
            answer = {}
        if r.status_code != 200 or "error" in answer:
            raise Rejected(
                f"Bitrix24 HTTP {r.status_code}: {answer.get('error_description') or answer.get('error')}"
            )
        return answer

    async def _registered(self, endpoint: Endpoint, request_id: int | None) -> str | None:
        async with self._session() as s:
            return (
                await s.execute(
                    select(m.OutboxEvent.ref).where(
                        m.OutboxEvent.endpoint == endpoint.name,
                        m.OutboxEvent.request_id == request_id,
                        m.OutboxEvent.event == "request.created",
                        m.OutboxEvent.status == "delivered",
                    )
                )
            ).scalar()

    async def _talk_seconds(self, request_id: int | None) -> int:
        async with self._session() as s:
            value = (
                await s.execute(
                    select(func.max(m.Attempt.talk_seconds)).where(
                        m.Attempt.request_id == request_id, m.Attempt.outcome == "answered"
                    )
                )
            ).scalar()
        return int(value or 0)


# Bitrix24 telephony.externalcall.finish STATUS_CODE by how the request closed.
BITRIX_STATUS = {
    "reached": "200",
    "recovered": "200",
    "failed": "304",
    "expired": "304",
    "cancelled": "603-S",
}


def bitrix_register(req: dict[str, Any], user_id: int) -> dict[str, Any]:
    """The missed call as an incoming call in the CRM (a lead or contact is found or made)."""
    return {
        "USER_ID": user_id,
        "PHONE_NUMBER": req["number"],
        "TYPE": 2,  # incoming
        "CALL_START_DATE": req["created_at"],
        "CRM_CREATE": 1,
        "SHOW": 0,
    }


def bitrix_finish(req: dict[str, Any], call_id: str, user_id: int, talk_seconds: int) -> dict[str, Any]:
    return {
        "CALL_ID": call_id,
        "USER_ID": user_id,
        "DURATION": talk_seconds,
        "STATUS_CODE": BITRIX_STATUS.get(req["status"], "OTHER"),
        "ADD_TO_CHAT": 0,
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


# -- the command line ------------------------------------------------------------------------


async def list_events(engine: AsyncEngine, status: str | None, limit: int) -> list[m.OutboxEvent]:
    from callbackd.adapters.db import sessionmaker

    async with sessionmaker(engine)() as s:
        q = select(m.OutboxEvent).order_by(m.OutboxEvent.id.desc()).limit(limit)
        if status:
            q = q.where(m.OutboxEvent.status == status)
        return list((await s.execute(q)).scalars())


async def retry(engine: AsyncEngine, ids: list[int], *, all_dead: bool, now: datetime) -> int:
    """Dead (or pending) events due now with a fresh count of tries; returns how many."""
    from callbackd.adapters.db import sessionmaker

    q = update(m.OutboxEvent).where(m.OutboxEvent.status.in_(["dead", "pending"]))
    q = q.where(m.OutboxEvent.status == "dead") if all_dead else q.where(m.OutboxEvent.id.in_(ids))
    async with sessionmaker(engine)() as s, s.begin():
        done = await s.execute(q.values(status="pending", tries=0, due_at=now, last_error=""))
        return done.rowcount
