"""The operator-first dialer: claim due requests, ring a free operator, follow the call.

Rules it enforces (each in one place):
- never more calls at once than free operators, nor more than ``max_concurrent``;
- no new callback while live callers wait in the queues (unless turned off);
- one number is never in two of our calls at once (in-memory set, and the
  database allows one open request per number);
- the attempt row is written before the Originate is sent, and panoramisk never
  re-sends an Originate, so a crash or reconnect cannot dial twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from callbackd.adapters.ami import AmiClient, AmiError
from callbackd.adapters.store import Finished, Store
from callbackd.config import DialerConfig
from callbackd.domain.detection import CALLBACK_CHANNEL_PREFIX
from callbackd.domain.errors import InvalidNumber
from callbackd.domain.limits import AbuseGuard
from callbackd.domain.operators import OperatorPool, dial_channel
from callbackd.domain.outcomes import (
    Outcome,
    client_leg_outcome,
    operator_leg_outcome,
    originate_reason_text,
)
from callbackd.domain.phone import E164, caller_id_for, mask, sanitize_caller_name
from callbackd.domain.states import AttemptStatus, RequestEvent

log = structlog.get_logger("callbackd.dialer")

# Extra wait for OriginateResponse beyond the operator's ring time.
ORIGINATE_SLACK = 15.0
# After the operator's channel hangs up, how long to wait for the bridge context's result.
RESULT_GRACE = 3.0
CAPPED_LOG_EVERY = timedelta(hours=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Run:
    """One attempt in flight."""

    attempt_id: str
    channel_id: str
    request_id: int
    number: str
    operator: str
    try_no: int
    reason: str
    result: asyncio.Future[dict[str, str]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    bridged: int = 0
    # Bridge id -> channels seen entering it. Only the bridge our own channel is in counts:
    # an operator reached through a Local channel (FreePBX members) has a bridge of its own.
    bridges: dict[str, set[str]] = field(default_factory=dict)
    client_answered_at: datetime | None = None
    operator_answered_at: datetime | None = None
    client_channel: str | None = None
    hungup: bool = False
    # Status writes for one attempt must land in the order the events came.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Dialer:
    def __init__(
        self,
        cfg: DialerConfig,
        store: Store,
        ami: AmiClient,
        pool: OperatorPool,
        *,
        mask_numbers: bool = False,
        clock: Callable[[], datetime] = utcnow,
        on_finished: Callable[[Run, Finished], None] | None = None,
        guard: AbuseGuard | None = None,
        on_started: Callable[[Run, Any], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.ami = ami
        self.pool = pool
        self.clock = clock
        self.mask_numbers = mask_numbers
        self.on_finished = on_finished
        # Called with the run and the claimed request row once its attempt is written (metrics).
        self.on_started = on_started
        self.runs: dict[str, Run] = {}  # by channel id
        self.accepting = True
        self.wake = asyncio.Event()
        self.finished = asyncio.Event()  # set whenever an attempt ends
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reconciled = False
        self.paused_until: datetime | None = None
        self.guard = guard
        self._capped_logged: datetime | None = None

    def _num(self, number: str) -> str:
        return mask(number) if self.mask_numbers else number

    # -- main loop -------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.cfg.poll_interval.total_seconds())
            self.wake.clear()
            if not (self.accepting and self.reconciled and self.ami.connected):
                continue
            try:
                await self.tick()
            except Exception:
                log.exception("dialer.tick_failed")

    async def tick(self) -> None:
        now = self.clock()
        # Due times are inside business hours, but a request can wait for an operator
        # past closing time: it is never dialled then, it waits for the next opening.
        if not self.store.schedule.calendar.is_open(now):
            return
        if self.paused_until is not None and now < self.paused_until:
            return
        if self.cfg.hold_while_callers_wait and self.pool.callers_waiting() > 0:
            return
        free = self.pool.free(now.timestamp())
        capacity = min(self.cfg.max_concurrent - len(self.runs), len(free))
        if capacity <= 0:
            return
        left = self.guard.attempts_left(now) if self.guard is not None else None
        if left is not None:
            if left <= 0:
                self._log_capped(now)
                return
            capacity = min(capacity, left)
        busy_numbers = [r.number for r in self.runs.values()]
        for req in await self.store.claim_due(now, capacity, exclude_numbers=busy_numbers):
            free = self.pool.free(self.clock().timestamp())
            # A SIGTERM while the claim was in the database: give it back, start nothing.
            if not self.accepting or not free or req.number in busy_numbers:
                await self.store.unclaim(req.id, self.clock())
                continue
            await self._launch(req, free[0].interface)
            busy_numbers.append(req.number)

    def _log_capped(self, now: datetime) -> None:
        """Once an hour at most: the dialer checks every poll, the log must not."""
        if self._capped_logged is not None and now - self._capped_logged < CAPPED_LOG_EVERY:
            return
        self._capped_logged = now
        assert self.guard is not None
        log.warning("dialer.capped", attempts_per_hour=self.guard.limits.attempts_per_hour)

    # -- one attempt -----------------------------------------------------------------

    async def _launch(self, req: Any, operator: str) -> None:
        now = self.clock()
        try:
            number = E164.trusted(req.number)  # digits and a leading '+', nothing else
        except InvalidNumber:
            # Only a row written behind our back can get here; never dial it, never claim it again.
            log.error("request.bad_number", request_id=req.id)
            await self.store.admin_event(req.id, RequestEvent.FAIL, now)
            return
        self.pool.reserve(operator, now.timestamp())
        try:
            attempt = await self.store.start_attempt(req.id, operator, now)
        except Exception:
            self.pool.release(operator)
            raise
        if self.guard is not None:
            self.guard.attempt_started(now)
        run = Run(attempt.id, attempt.channel_id, req.id, str(number), operator, attempt.try_no, req.reason)
        self.runs[run.channel_id] = run
        fields = originate_fields(self.cfg, run, req.name, number, req.reason, did=req.did)
        log.info(
            "operator.ringing",
            request_id=req.id,
            attempt_id=run.attempt_id,
            try_no=run.try_no,
            operator=operator,
            number=self._num(run.number),
            reason=req.reason,
        )
        if self.on_started is not None:
            self.on_started(run, req)
        task = asyncio.ensure_future(self._follow(run, fields))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, run: Run, fields: dict[str, Any] | None) -> None:
        """Send the Originate (unless re-attaching after a restart) and wait for the outcome."""
        try:
            outcome, extra = await self._await_outcome(run, fields)
        except Exception as exc:
            log.exception("attempt.follow_failed", attempt_id=run.attempt_id)
            outcome, extra = Outcome.UNKNOWN, {"originate_reason": f"error:{type(exc).__name__}"[:24]}
        await self._finish(run, outcome, extra)

    async def _await_outcome(self, run: Run, fields: dict[str, Any] | None) -> tuple[Outcome, dict[str, Any]]:
        extra: dict[str, Any] = {}
        if fields is not None:
            try:
                future = self.ami.originate(fields)
            except AmiError as exc:
                return Outcome.OPERATOR_NO_ANSWER, {"originate_reason": f"ami:{exc}"[:24]}
            wait = self.cfg.operator_ring.total_seconds() + ORIGINATE_SLACK
            try:
                replies = await asyncio.wait_for(asyncio.shield(future), wait)
            except TimeoutError:
                replies = None
            if replies is not None:
                if not isinstance(replies, list):
                    replies = [replies]
                ack = replies[0]
                if ack.get("Response") == "Error":
                    # The PBX, not the operator, said no (still booting, module missing):
                    # dial nothing for a while rather than burn through the queue.
                    self.paused_until = self.clock() + self.cfg.operator_retry_delay
                    log.warning("originate.refused", attempt_id=run.attempt_id, message=ack.get("Message"))
                    return Outcome.OPERATOR_NO_ANSWER, {"originate_reason": "refused"}
                response = replies[-1]
                reason = response.get("Reason", "")
                extra["originate_reason"] = originate_reason_text(reason)
                op_outcome = operator_leg_outcome(reason)
                if op_outcome is not None:
                    return op_outcome, extra
            # replies None: the AMI link dropped; the channel events (or reconciliation) decide.
            if replies is not None:
                self._operator_up(run)
        result = await run.result
        extra.update(
            dial_status=(result.get("DialStatus") or None),
            hangup_cause=_int(result.get("ClientCause")) or _int(result.get("HangupCause")),
        )
        if result.get("Lost"):
            if run.operator_answered_at is None:
                return Outcome.OPERATOR_NO_ANSWER, extra
            return (Outcome.ANSWERED if run.bridged >= 2 else Outcome.UNKNOWN), extra
        outcome = client_leg_outcome(
            result.get("Stage", ""), result.get("DialStatus", ""), result.get("ClientCause")
        )
        if outcome is Outcome.ANSWERED:
            extra["talk_seconds"] = self._talk_seconds(run, result)
        return outcome, extra

    def _talk_seconds(self, run: Run, result: dict[str, str]) -> int | None:
        """From the bridge to now; ANSWEREDTIME counts from the operator's answer."""
        if run.client_answered_at is not None:
            return max(0, round((self.clock() - run.client_answered_at).total_seconds()))
        return _int(result.get("AnsweredTime"))

    def _operator_up(self, run: Run) -> None:
        if run.operator_answered_at is not None:
            return
        run.operator_answered_at = self.clock()
        log.info(
            "operator.answered",
            request_id=run.request_id,
            attempt_id=run.attempt_id,
            operator=run.operator,
            number=self._num(run.number),
        )
        self._mark(run, AttemptStatus.OPERATOR_UP, operator_answered_at=run.operator_answered_at)

    async def _finish(self, run: Run, outcome: Outcome, extra: dict[str, Any]) -> None:
        now = self.clock()
        if run.client_answered_at is not None:
            extra.setdefault("client_answered_at", run.client_answered_at)
        try:
            async with run.lock:
                done = await self.store.finish_attempt(
                    run.attempt_id,
                    outcome,
                    now,
                    max_operator_tries=self.cfg.operator_tries,
                    operator_retry_delay=self.cfg.operator_retry_delay,
                    **{k: v for k, v in extra.items() if v is not None},
                )
        finally:
            self.runs.pop(run.channel_id, None)
            self.pool.release(run.operator)
            self.wake.set()
            self.finished.set()
        if done is not None:
            log.info(
                "attempt.outcome",
                request_id=run.request_id,
                attempt_id=run.attempt_id,
                try_no=run.try_no,
                operator=run.operator,
                number=self._num(run.number),
                outcome=outcome.value,
                counted=done.counted,
                request_status=done.request_status,
                next_due=done.due_at.isoformat() if done.due_at else None,
                close_reason=done.close_reason,
            )
            if self.on_finished is not None:
                self.on_finished(run, done)

    # -- AMI events for our calls ----------------------------------------------------

    def on_event(self, ev: dict[str, str]) -> None:
        name = ev.get("Event")
        if name == "UserEvent" and ev.get("UserEvent") == "CallbackdResult":
            run = self._by_attempt(ev.get("Attempt", ""))
            if run is not None and not run.result.done():
                run.result.set_result(ev)
            return
        run = self.runs.get(ev.get("Linkedid", ""))
        if run is None:
            return
        uniqueid = ev.get("Uniqueid", "")
        if name == "Newstate" and uniqueid == run.channel_id and ev.get("ChannelState") == "6":
            self._operator_up(run)
        elif name == "DialBegin" and uniqueid == run.channel_id:
            run.client_channel = ev.get("DestUniqueid") or ev.get("DestChannel")
            log.info(
                "client.ringing",
                request_id=run.request_id,
                attempt_id=run.attempt_id,
                number=self._num(run.number),
            )
            self._mark(run, AttemptStatus.CLIENT_RINGING)
        elif name == "BridgeEnter":
            members = run.bridges.setdefault(ev.get("BridgeUniqueid", ""), set())
            members.add(uniqueid)
            if run.channel_id in members and len(members) >= 2 and run.bridged < 2:
                run.bridged = 2
                run.client_answered_at = self.clock()
                log.info(
                    "bridged",
                    request_id=run.request_id,
                    attempt_id=run.attempt_id,
                    operator=run.operator,
                    number=self._num(run.number),
                )
                self._mark(run, AttemptStatus.BRIDGED, client_answered_at=run.client_answered_at)
        elif name == "Hangup" and uniqueid == run.channel_id:
            run.hungup = True
            asyncio.get_running_loop().call_later(RESULT_GRACE, self._lost_result, run)

    def _by_attempt(self, attempt_id: str) -> Run | None:
        return self.runs.get(f"{CALLBACK_CHANNEL_PREFIX}{attempt_id}")

    def _lost_result(self, run: Run) -> None:
        """The operator's channel is gone and no CallbackdResult came: decide from what we saw."""
        if not run.result.done():
            run.result.set_result({"Lost": "1"})

    def _mark(self, run: Run, status: AttemptStatus, **fields: Any) -> None:
        task = asyncio.ensure_future(self._mark_safe(run, status, fields))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mark_safe(self, run: Run, status: AttemptStatus, fields: dict[str, Any]) -> None:
        try:
            async with run.lock:
                await self.store.mark_attempt(run.attempt_id, status, **fields)
        except Exception:
            log.exception("attempt.mark_failed", attempt_id=run.attempt_id)

    # -- restart and reconnect -------------------------------------------------------

    async def reconcile(self, live: set[str] | None = None) -> None:
        """Before dialling anything new: match attempts left in flight against live channels."""
        if live is None:
            live = await self.live_channel_ids()
        for att in await self.store.in_flight():
            if att.channel_id in live and att.channel_id not in self.runs:
                req_reason = ""
                run = Run(
                    att.id, att.channel_id, att.request_id, att.number, att.operator, att.try_no, req_reason
                )
                run.operator_answered_at = att.operator_answered_at
                if att.status == AttemptStatus.BRIDGED:
                    run.bridged = 2
                self.runs[run.channel_id] = run
                self.pool.reserve(att.operator, self.clock().timestamp())
                log.info(
                    "attempt.reattached",
                    request_id=att.request_id,
                    attempt_id=att.id,
                    number=self._num(att.number),
                    status=att.status,
                )
                task = asyncio.ensure_future(self._follow(run, None))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif att.channel_id not in live and att.channel_id not in self.runs:
                outcome = Outcome.ANSWERED if att.status == AttemptStatus.BRIDGED else Outcome.UNKNOWN
                if att.status == AttemptStatus.DIALLING:
                    # Never reached the operator's answer: the client was not rung.
                    outcome = Outcome.OPERATOR_NO_ANSWER
                run = Run(att.id, att.channel_id, att.request_id, att.number, att.operator, att.try_no, "")
                log.warning(
                    "attempt.reconciled",
                    request_id=att.request_id,
                    attempt_id=att.id,
                    number=self._num(att.number),
                    was=att.status,
                    outcome=outcome.value,
                )
                await self._finish(run, outcome, {"originate_reason": "reconciled"})
        # Runs we follow whose channel vanished during an AMI gap.
        for run in list(self.runs.values()):
            if run.channel_id not in live and run.operator_answered_at is not None and not run.result.done():
                run.result.set_result({"Lost": "1"})
        await self.store.release_stale_claims(self.clock())
        self.reconciled = True
        self.wake.set()

    async def live_channel_ids(self) -> set[str]:
        return channel_ids(await self.ami.list_action({"Action": "CoreShowChannels"}))

    async def drain(self, grace: timedelta) -> bool:
        """Stop taking new attempts; wait for the ones in flight. True if all finished."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace.total_seconds()
        while self.runs and loop.time() < deadline:
            self.finished.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), deadline - loop.time())
        return not self.runs

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task


def whisper(cfg: DialerConfig, reason: str) -> str:
    prompts = list(cfg.whisper_custom) or [*cfg.whisper_intro, *cfg.whisper_reasons.get(reason, [])]
    return "&".join(prompts) or "beep"


class AttemptRef(Protocol):
    """What :func:`originate_fields` needs of a :class:`Run`."""

    attempt_id: str
    channel_id: str
    operator: str
    try_no: int


def originate_fields(
    cfg: DialerConfig, run: AttemptRef, name: str, number: E164, reason: str, did: str | None = None
) -> dict[str, Any]:
    """The Originate for one attempt.

    ``number`` must already be an :class:`E164` (checked again here) and ``name`` is
    sanitised here, so nothing a caller sent can add a channel, an argument or a
    dialplan expression to what Asterisk runs.
    """
    number = E164.trusted(number)
    shown = sanitize_caller_name(name) or str(number)
    return {
        # The member's interface as it dials (an agent through our callbackd-agent context).
        "Channel": dial_channel(run.operator),
        "Context": cfg.context,
        "Exten": "s",
        "Priority": "1",
        "Timeout": str(int(cfg.operator_ring.total_seconds() * 1000)),
        "CallerID": f'"{shown}" <{number}>',
        "ChannelId": run.channel_id,
        "OtherChannelId": f"{run.channel_id}-2",
        "Variable": [
            f"CBD_ATTEMPT={run.attempt_id}",
            f"CBD_DIAL={client_dial(cfg, number)}",
            f"CBD_DIAL_TIMEOUT={int(cfg.client_ring.total_seconds())}",
            f"CBD_OUTCID={caller_id_for(did, cfg.callerid_by_did, cfg.outbound_callerid)}",
            f"CBD_WHISPER={whisper(cfg, reason)}",
            f"CBD_TRY={run.try_no}",
        ],
    }


def client_dial(cfg: DialerConfig, number: E164) -> str:
    """The client leg's dial string: ``client_target`` when set, else ``dial_pattern``."""
    target = cfg.client_dial_target()
    if target is not None:
        return target.render(number)
    return cfg.dial_pattern.format(number=E164.trusted(number))


def channel_ids(events: list[dict[str, str]]) -> set[str]:
    """Uniqueids and Linkedids of a CoreShowChannels answer."""
    chans = [e for e in events if e.get("Event") == "CoreShowChannel"]
    return {e.get("Uniqueid", "") for e in chans} | {e.get("Linkedid", "") for e in chans}


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None
