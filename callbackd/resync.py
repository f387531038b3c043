"""After every AMI login: resync operators, queues and calls in progress, then reconcile attempts.

Nothing is dialled until this succeeds. A PBX that is still starting answers
QueueStatus late or not at all, so the resync is retried while the link is up.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import structlog

from callbackd.adapters.ami import AmiError
from callbackd.dialer import channel_ids

log = structlog.get_logger("callbackd")

RESYNC_TRIES = 20
RESYNC_RETRY_S = 2.0
RESYNC_TIMEOUT_S = 5.0


async def on_login(ami: Any, pool: Any, detector: Any, dialer: Any) -> None:
    dialer.reconciled = False
    for attempt in range(1, RESYNC_TRIES + 1):
        try:
            await resync(ami, pool, detector, dialer)
            return
        except AmiError as exc:
            log.warning("ami.resync_failed", error=str(exc), attempt=attempt)
        if not ami.connected:
            return  # the next login resyncs
        await asyncio.sleep(RESYNC_RETRY_S)
    log.error("ami.resync_gave_up", tries=RESYNC_TRIES, hint="dialling stays paused until the next login")


async def resync(ami: Any, pool: Any, detector: Any, dialer: Any) -> None:
    now = datetime.now(UTC)
    status = await ami.list_action({"Action": "QueueStatus"}, timeout=RESYNC_TIMEOUT_S)
    asked_at = datetime.now(UTC)  # channels that started after this are not in the answer
    channels = await ami.list_action({"Action": "CoreShowChannels"}, timeout=RESYNC_TIMEOUT_S)
    pool.resync(status)
    live = [e for e in channels if e.get("Event") == "CoreShowChannel"]
    lost = detector.resync(live, status, now)
    if lost:
        log.warning("calls.ended_unseen", count=len(lost), linkedids=[c.linkedid for c in lost][:20])
    await dialer.reconcile(channel_ids(channels), asked_at)
    log.info(
        "ami.resynced",
        calls_followed=len(detector.calls),
        members=len(pool.members),
        free=len(pool.free(now.timestamp())),
        waiting=pool.callers_waiting(),
        in_flight=len(dialer.runs),
    )
