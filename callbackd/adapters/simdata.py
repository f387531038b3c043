"""A stored period read for ``callbackd simulate``: its calls, web leads and callback tries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callbackd.adapters import models as m
from callbackd.domain.analytics import WEB_SOURCES
from callbackd.domain.detection import CALLBACK_CHANNEL_PREFIX
from callbackd.domain.simulation import SimLead, StoredAttempt, StoredCall


@dataclass(frozen=True)
class StoredPeriod:
    calls: list[StoredCall]
    leads: list[SimLead]
    attempts: list[StoredAttempt]  # tries of the requests created in the period
    operators: int  # operators seen answering calls or callbacks in it (the larger of the two counts)


async def load_period(engine: AsyncEngine, start: datetime, end: datetime) -> StoredPeriod:
    async with engine.connect() as conn:
        calls = [
            StoredCall(*r)
            for r in await conn.execute(
                select(
                    m.Call.started_at,
                    m.Call.number,
                    m.Call.queue,
                    m.Call.answered_at,
                    m.Call.ended_at,
                    m.Call.hold_time,
                    m.Call.outcome,
                    m.Call.joined_at,
                    m.Call.agent,
                ).where(
                    m.Call.started_at >= start,
                    m.Call.started_at < end,
                    m.Call.linkedid.not_like(f"{CALLBACK_CHANNEL_PREFIX}%"),
                )
            )
        ]
        agents = {
            a
            for (a,) in await conn.execute(
                select(m.Call.agent).where(m.Call.started_at >= start, m.Call.started_at < end).distinct()
            )
            if a
        }
        requests = (
            await conn.execute(
                select(m.Request.id, m.Request.number, m.Request.created_at, m.Request.sources).where(
                    m.Request.created_at >= start, m.Request.created_at < end
                )
            )
        ).all()
        leads = [
            SimLead((created - start).total_seconds(), number)
            for _, number, created, sources in requests
            if sources and sources[0] in WEB_SOURCES
        ]
        rows = await conn.execute(
            select(
                m.Attempt.request_id,
                m.Attempt.started_at,
                m.Attempt.ended_at,
                m.Attempt.outcome,
                m.Attempt.counted,
                m.Attempt.operator,
                m.Request.number,
            )
            .join(m.Request, m.Request.id == m.Attempt.request_id)
            .where(m.Request.created_at >= start, m.Request.created_at < end)
        )
        attempts = []
        dialled = set()  # interfaces (PJSIP/op1), where calls name members ("Operator One")
        for rid, started, ended, outcome, counted, operator, number in rows:
            attempts.append(StoredAttempt(rid, started, ended, outcome, bool(counted), operator, number))
            if outcome == "answered":
                dialled.add(operator)
    return StoredPeriod(calls, leads, attempts, max(len(agents), len(dialled), 1))
