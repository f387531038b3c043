"""API v1 beyond intake: requests (list, show, cancel, retry, schedule) and report figures.

Mounted on the intake's FastAPI app; every route needs a bearer token with a scope
(:mod:`callbackd.adapters.tokens`): ``read`` to look, ``admin`` to change. Changes go
through the request state table and are written to the audit log with the token's name.
"""

# No ``from __future__ import annotations``: the routes' annotations name per-app dependencies
# (closures), which FastAPI could not resolve from strings.

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import AwareDatetime, BaseModel, Field

from callbackd.adapters import db
from callbackd.adapters.http import Problem
from callbackd.adapters.reports import ReportSettings, period_report, report_dict
from callbackd.adapters.store import NotFound, NumberHasOpenRequest, Store
from callbackd.adapters.tokens import Token, Tokens
from callbackd.domain.errors import IllegalTransition
from callbackd.domain.metrics import Grouping
from callbackd.domain.periods import parse_bound
from callbackd.domain.states import RequestEvent, RequestStatus

log = structlog.get_logger("callbackd.api")

MAX_ID = 2**31 - 1  # INTEGER on both databases
# A report's rows cost memory and time: bounds keep one request from tying the daemon up.
MAX_PERIOD = timedelta(days=3 * 366)
MAX_HOURLY = timedelta(days=93)
RequestId = Annotated[int, Path(ge=1, le=MAX_ID, description="The request's id")]
Status = Literal["open", "dialling", "reached", "recovered", "failed", "expired", "cancelled"]
assert set(Status.__args__) == {s.value for s in RequestStatus}  # type: ignore[attr-defined]


class RequestOut(BaseModel):
    id: int
    number: str
    name: str
    status: Status
    reason: str
    sources: list[str]
    contacts: int
    attempts: int
    created_at: datetime
    due_at: datetime | None
    preferred_at: datetime | None
    closed_at: datetime | None
    close_reason: str | None
    note: str


class RequestList(BaseModel):
    items: list[RequestOut]
    next_before: int | None = Field(description="Pass as ?before= for the next page; null on the last")


class ContactOut(BaseModel):
    source: str
    reason: str
    at: datetime
    disposition: str
    waited: int | None
    comment: str


class AttemptOut(BaseModel):
    id: str
    try_no: int
    operator: str
    status: str
    outcome: str | None
    counted: bool
    started_at: datetime
    ended_at: datetime | None
    talk_seconds: int | None
    dial_status: str | None
    hangup_cause: int | None


class AuditOut(BaseModel):
    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]


class RequestDetail(RequestOut):
    contacts_detail: list[ContactOut]
    attempts_detail: list[AttemptOut]
    audit: list[AuditOut]


class ScheduleIn(BaseModel):
    at: AwareDatetime = Field(description="When to call, with its UTC offset")


class ReportOut(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime
    timezone: str
    by: Literal["day", "hour", "queue", "operator", "source"] | None
    short_abandon_s: float
    service_level_s: float
    rows: list[dict[str, Any]]
    total: dict[str, Any]


def request_out(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "number": r.number,
        "name": r.name,
        "status": r.status,
        "reason": r.reason,
        "sources": list(r.sources or []),
        "contacts": r.contact_count,
        "attempts": r.attempts_made,
        "created_at": r.created_at,
        "due_at": r.due_at,
        "preferred_at": r.preferred_at,
        "closed_at": r.closed_at,
        "close_reason": r.close_reason,
        "note": r.note,
    }


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "The body is not JSON",
        401: "Missing or wrong bearer token",
        403: "The token lacks the scope this route needs",
        404: "No such request",
        409: "Not possible in the request's status, or the number has another open request",
        422: "A parameter or the body is not valid",
    }
    return {c: {"model": Problem, "description": text[c]} for c in codes}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def router(
    store: Store,
    tokens: Tokens,
    *,
    db_url: str,
    settings: ReportSettings | Callable[[], ReportSettings],
    wake: Callable[[], None] = lambda: None,
    clock: Callable[[], datetime] = _utcnow,
) -> APIRouter:
    """The routes; *wake* tells the dialer a request became due, *settings* may follow reloads."""
    r = APIRouter(prefix="/v1", tags=["requests"])
    read = Depends(tokens.require("read"))
    admin = tokens.require("admin")
    reports_running = asyncio.Semaphore(2)  # a report is seconds of CPU: two at a time at most

    def report_settings() -> ReportSettings:
        return settings() if callable(settings) else settings

    @r.get(
        "/requests",
        response_model=RequestList,
        dependencies=[read],
        responses=_problems(401, 403, 422),
        summary="List requests, newest first",
    )
    async def list_requests(
        status: Status | None = None,
        number: Annotated[str | None, Query(max_length=20, description="E.164, e.g. +12025550123")] = None,
        before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        rows = await store.list_requests(status, limit, number=number, before=before)
        return {
            "items": [request_out(x) for x in rows],
            "next_before": rows[-1].id if len(rows) == limit else None,
        }

    @r.get(
        "/requests/{request_id}",
        response_model=RequestDetail,
        dependencies=[read],
        responses=_problems(401, 403, 404, 422),
        summary="One request with its contacts, attempts and audit trail",
    )
    async def show_request(request_id: RequestId) -> dict[str, Any]:
        try:
            req, attempts, contacts = await store.get_request(request_id)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        audit = await store.audit_trail(request_id)
        return {
            **request_out(req),
            "contacts_detail": [
                {
                    "source": c.source,
                    "reason": c.reason,
                    "at": c.at,
                    "disposition": c.disposition,
                    "waited": c.waited,
                    "comment": c.comment,
                }
                for c in contacts
            ],
            "attempts_detail": [
                {
                    "id": a.id,
                    "try_no": a.try_no,
                    "operator": a.operator,
                    "status": a.status,
                    "outcome": a.outcome,
                    "counted": a.counted,
                    "started_at": a.started_at,
                    "ended_at": a.ended_at,
                    "talk_seconds": a.talk_seconds,
                    "dial_status": a.dial_status,
                    "hangup_cause": a.hangup_cause,
                }
                for a in attempts
            ],
            "audit": [{"at": e.at, "actor": e.actor, "action": e.action, "detail": e.detail} for e in audit],
        }

    async def change(request_id: int, event: RequestEvent, token: Token, at: datetime | None = None) -> Any:
        try:
            req = await store.admin_event(request_id, event, clock(), at=at, actor=token.actor)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except (IllegalTransition, NumberHasOpenRequest) as exc:
            raise HTTPException(409, str(exc)) from None
        log.info("api.request_changed", request_id=request_id, action=event.value, actor=token.actor)
        if req.status == RequestStatus.OPEN.value:
            wake()
        return request_out(req)

    write = {"response_model": RequestOut, "responses": _problems(401, 403, 404, 409, 422)}

    @r.post("/requests/{request_id}/cancel", **write, summary="Cancel: no more attempts")
    async def cancel(request_id: RequestId, token: Annotated[Token, Depends(admin)]) -> Any:
        return await change(request_id, RequestEvent.CANCEL, token)

    @r.post("/requests/{request_id}/retry", **write, summary="Call now (reopens a closed request)")
    async def retry(request_id: RequestId, token: Annotated[Token, Depends(admin)]) -> Any:
        return await change(request_id, RequestEvent.RETRY_NOW, token)

    @r.post(
        "/requests/{request_id}/schedule",
        response_model=RequestOut,
        responses=_problems(400, 401, 403, 404, 409, 422),
        summary="Call at a chosen time",
    )
    async def schedule(
        request_id: RequestId, body: ScheduleIn, token: Annotated[Token, Depends(admin)]
    ) -> Any:
        try:
            at = body.at.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00+01:00: before the first UTC datetime
            raise HTTPException(422, "body.at: out of range") from None
        return await change(request_id, RequestEvent.SCHEDULE, token, at)

    @r.get(
        "/reports",
        response_model=ReportOut,
        dependencies=[read],
        responses=_problems(401, 403, 422),
        tags=["reports"],
        summary="Report figures for a period, as `callbackd report --format json`",
    )
    async def report(
        from_: Annotated[str, Query(alias="from", max_length=40, description="YYYY-MM-DD or ISO 8601")],
        to: Annotated[str | None, Query(max_length=40, description="Exclusive; default now")] = None,
        by: Literal["day", "hour", "queue", "operator", "source"] | None = None,
    ) -> Any:
        s = report_settings()
        try:
            start = parse_bound(from_, s.tz)
            end = parse_bound(to, s.tz) if to else clock()
            start.astimezone(UTC), end.astimezone(UTC)  # the database compares in UTC: must exist there
        except (ValueError, OverflowError):
            raise HTTPException(422, "from and to: use YYYY-MM-DD or an ISO 8601 date and time") from None
        if start >= end:
            raise HTTPException(422, "to must be after from (it is exclusive)")
        longest = MAX_HOURLY if by == "hour" else MAX_PERIOD
        if end - start > longest:
            raise HTTPException(
                422, f"a period {'by hour ' if by == 'hour' else ''}spans {longest.days} days at most"
            )
        async with reports_running:
            rep = await asyncio.to_thread(_report_in_thread, db_url, start, end, by, s)
        return report_dict(rep)

    return r


def _report_in_thread(url: str, start: datetime, end: datetime, by: str | None, s: ReportSettings) -> Any:
    """A worker thread with its own loop and engine: the daemon's loop keeps reading AMI meanwhile."""

    async def go() -> Any:
        engine = db.make_engine(url, read_only=True)
        try:
            grouping = Grouping(by) if by else None
            return await period_report(engine, start, end, by=grouping, tz=s.tz, thresholds=s.thresholds)
        finally:
            await engine.dispose()

    return asyncio.run(go())
