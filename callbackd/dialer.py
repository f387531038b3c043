"""The operator-first dialer: a thin loop around the attempt tracker.

It claims due requests, writes each attempt, sends the Originate, feeds AMI events
and clock ticks to :class:`~callbackd.domain.attempts.AttemptTracker`, and applies
the actions it returns. Rules kept here (each in one place):
- never more calls at once than free operators, nor more than ``max_concurrent``;
- a callback rings a free member of the queue its client called, then its fall-backs, and
  waits while live callers wait in that queue (unless turned off): domain/routing.py;
- the attempt row is written before the Originate is sent, and panoramisk never
  re-sends an Originate, so a crash or reconnect cannot dial twice;
- a launch that fails gives its own request back, and the batch goes on;
- no attempt starts outside its hours: the store checks them again as it writes the attempt;
- an outcome that cannot be stored is kept (in memory and in the status) and
  written again until it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from callbackd.adapters.ami import AmiClient, AmiError
from callbackd.adapters.store import Finished, OutsideHours, Store
from callbackd.config import DialerConfig
from callbackd.domain.attempts import (
    Action,
    Attempt,
    AttemptTracker,
    Ended,
    Mark,
    Pause,
    Release,
    Timing,
)
from callbackd.domain.errors import InvalidNumber
from callbackd.domain.limits import AbuseGuard
from callbackd.domain.operators import OperatorPool, dial_channel
from callbackd.domain.phone import E164, caller_id_for, mask, sanitize_caller_name
from callbackd.domain.retry import OperatorFailover
from callbackd.domain.routing import claimable
from callbackd.domain.states import AttemptStatus, RequestEvent

log = structlog.get_logger("callbackd.dialer")

CAPPED_LOG_EVERY = timedelta(hours=1)
# An outcome write that failed is tried again after this, doubling up to the cap.
SAVE_RETRY = (0.5, 30.0)

Run = Attempt  # what on_started/on_finished receive


def utcnow() -> datetime:
    return datetime.now(UTC)


def timing(cfg: DialerConfig) -> Timing:
    return Timing(
        operator_ring=cfg.operator_ring,
        client_ring=cfg.client_ring,
        refused_pause=cfg.operator_retry_delay,
    )


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
        on_finished: Callable[[Attempt, Finished], None] | None = None,
        guard: AbuseGuard | None = None,
        on_started: Callable[[Attempt, Any], None] | None = None,
    ) -> None:
        self.tracker = AttemptTracker(timing(cfg))
        self.cfg = cfg
        self.store = store
        self.ami = ami
        self.pool = pool
        self.clock = clock
        self.mask_numbers = mask_numbers
        self.on_finished = on_finished
        # Called with the attempt and the claimed request row once its attempt is written (metrics).
        self.on_started = on_started
        # Outcomes known but not yet stored, by attempt id: their numbers stay busy.
        self.unsaved: dict[str, Ended] = {}
        self.accepting = True
        self.wake = asyncio.Event()
        self.finished = asyncio.Event()  # set whenever an outcome is stored
        self._tasks: set[asyncio.Task[Any]] = set()
        self._locks: dict[str, asyncio.Lock] = {}  # one attempt's writes land in event order
        self._save_delay = SAVE_RETRY[0]
        self._save_after = 0.0
        self._leases_renewed = float("-inf")
        self._orphans_checked = float("-inf")
        self._saving = asyncio.Lock()
        self.reconciled = False
        self.paused_until: datetime | None = None
        self.guard = guard
        self._capped_logged: datetime | None = None

    @property
    def cfg(self) -> DialerConfig:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: DialerConfig) -> None:
        """A reload's ring times and queue routes apply to what starts after it."""
        self._cfg = cfg
        self.tracker.timing = timing(cfg)
        self.routes = cfg.routes()

    @property
    def runs(self) -> dict[str, Attempt]:
        """Attempts in flight, by channel id."""
        return self.tracker.attempts

    def _num(self, number: str) -> str:
        return mask(number) if self.mask_numbers else number

    # -- main loop -------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self.cfg.poll_interval.total_seconds()
            deadline = self.tracker.next_deadline()
            if deadline is not None:
                wait = min(wait, max(0.0, (deadline - self.clock()).total_seconds()) + 0.05)
            if self.unsaved:
                wait = min(wait, max(0.0, self._save_after - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)
            self.wake.clear()
            try:
                await self.step()
            except Exception:
                log.exception("dialer.tick_failed")

    async def step(self) -> None:
        """One turn: deadlines, unsaved outcomes, leases, then new attempts."""
        self.apply(self.tracker.tick(self.clock()))
        await self._save_unsaved()
        await self._renew_leases()
        if self.reconciled and self.ami.connected:
            await self._check_orphans()
        if self.accepting and self.reconciled and self.ami.connected:
            await self.tick()

    async def tick(self) -> None:
        now = self.clock()
        # Due times are inside business hours, but a request can wait for an operator
        # past closing time: it is never dialled then, it waits for the next opening
        # (the claim defers a request whose own queue's hours have ended).
        if not self.store.schedule.open_for_any(now):
            return
        if self.paused_until is not None and now < self.paused_until:
            return
        routes = self.routes
        hold = self.cfg.hold_while_callers_wait
        waiting = self.pool.waiting
        stamp = now.timestamp()
        queues, others = claimable(
            routes, waiting, hold, lambda qs: bool(self.pool.free(stamp, queues=qs, hold=hold))
        )
        capacity = self.cfg.max_concurrent - len(self.runs) - len(self.unsaved)
        capacity = min(capacity, len(self.pool.free(stamp, queues=routes.queues, hold=hold)))
        if not (queues or others) or capacity <= 0:
            return
        left = self.guard.attempts_left(now) if self.guard is not None else None
        if left is not None:
            if left <= 0:
                self._log_capped(now)
                return
            capacity = min(capacity, left)
        busy = self._busy_numbers()
        assigned: set[str] = set()

        def take(queue: str | None) -> bool:
            """Oldest first: a request is claimed only if its route still has an unassigned operator."""
            member = self.pool.pick(stamp, routes.usable(queue, waiting, hold), exclude=assigned, hold=hold)
            if member is not None:
                assigned.add(member.interface)
            return member is not None

        everything = others and len(queues) == len(routes.queues)
        claimed = await self.store.claim_due(
            now,
            capacity,
            exclude_numbers=sorted(busy),
            queues=None if everything else queues,
            unserved=routes.queues if others and not everything else None,
            take=take,
        )
        for req in claimed:
            usable = routes.usable(req.queue, self.pool.waiting, hold)
            member = self.pool.pick(self.clock().timestamp(), usable, hold=hold)
            # A SIGTERM while the claim was in the database: give it back, start nothing.
            if not self.accepting or member is None or req.number in busy:
                await self._give_back(req)
                continue
            await self._launch(req, member.interface)
            busy.add(req.number)

    def _busy_numbers(self) -> set[str]:
        return self.tracker.numbers() | {e.attempt.number for e in self.unsaved.values()}

    def _log_capped(self, now: datetime) -> None:
        """Once an hour at most: the dialer checks every poll, the log must not."""
        if self._capped_logged is not None and now - self._capped_logged < CAPPED_LOG_EVERY:
            return
        self._capped_logged = now
        assert self.guard is not None
        log.warning("dialer.capped", attempts_per_hour=self.guard.limits.attempts_per_hour)

    # -- one attempt -----------------------------------------------------------------

    async def _launch(self, req: Any, operator: str) -> None:
        """Start one attempt. Any failure gives this request back and leaves the batch going."""
        now = self.clock()
        try:
            number = E164.trusted(req.number)  # digits and a leading '+', nothing else
        except InvalidNumber:
            # Only a row written behind our back can get here; never dial it, never claim it again.
            log.error("request.bad_number", request_id=req.id)
            with contextlib.suppress(Exception):
                await self.store.admin_event(req.id, RequestEvent.FAIL, now)
            return
        self.pool.reserve(operator, now.timestamp())
        try:
            row = await self.store.start_attempt(req.id, operator, now, token=req.claim_token)
        except OutsideHours:  # claimed just before closing; the store put it back for the next opening
            self.pool.release(operator)
            log.info("attempt.hours_ended", request_id=req.id)
            return
        except Exception as exc:
            self.pool.release(operator)
            log.warning(
                "attempt.launch_failed", request_id=req.id, error=f"{type(exc).__name__}: {exc}"[:200]
            )
            await self._give_back(req)
            return
        if self.guard is not None:
            self.guard.attempt_started(now)
        att = Attempt(row.id, row.channel_id, req.id, str(number), operator, row.try_no, started_at=now)
        self.apply(self.tracker.begin(att, now))
        log.info(
            "operator.ringing",
            request_id=req.id,
            attempt_id=att.attempt_id,
            try_no=att.try_no,
            operator=operator,
            number=self._num(att.number),
            reason=req.reason,
        )
        try:
            if self.on_started is not None:
                self.on_started(att, req)
            future = self.ami.originate(
                originate_fields(self.cfg, att, req.name, number, req.reason, did=req.did, queue=req.queue)
            )
        except Exception as exc:  # nothing was sent: nobody rang, the try is not used
            if not isinstance(exc, AmiError):
                log.exception("attempt.originate_failed", attempt_id=att.attempt_id)
            self.apply(self.tracker.originate_failed(att.channel_id, str(exc), self.clock()))
            return
        self._spawn(self._originate_replies(att.channel_id, future))

    async def _give_back(self, req: Any) -> None:
        try:
            await self.store.unclaim(req.id, self.clock(), token=req.claim_token)
        except Exception as exc:  # the lease returns it later
            log.warning(
                "request.unclaim_failed", request_id=req.id, error=f"{type(exc).__name__}: {exc}"[:200]
            )

    async def _originate_replies(self, channel_id: str, future: asyncio.Future[Any]) -> None:
        """The ack and OriginateResponse; a link lost in between leaves it to the deadline."""
        try:
            wait = self.tracker.timing.limit(AttemptStatus.DIALLING).total_seconds()
            replies = await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            return
        if not isinstance(replies, list):
            replies = [replies]
        self.apply(self.tracker.originate_replied(channel_id, [dict(r) for r in replies], self.clock()))

    # -- actions ---------------------------------------------------------------------

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Mark):
                self._log_mark(action)
                self._spawn(self._mark(action))
            elif isinstance(action, Ended):
                self.unsaved[action.attempt.attempt_id] = action
                self._save_after = 0.0
                self.wake.set()
            elif isinstance(action, Release):
                # A dead node's attempt may name an operator one of ours is on now.
                if not any(a.operator == action.operator for a in self.runs.values()):
                    self.pool.release(action.operator)
                self.wake.set()
            elif isinstance(action, Pause):
                self.paused_until = action.until
                log.warning("originate.refused", paused_until=action.until.isoformat())

    def _log_mark(self, mark: Mark) -> None:
        att = mark.attempt
        names = {"operator_up": "operator.answered", "client_ringing": "client.ringing", "bridged": "bridged"}
        log.info(
            names.get(mark.status.value, "attempt.marked"),
            request_id=att.request_id,
            attempt_id=att.attempt_id,
            operator=att.operator,
            number=self._num(att.number),
        )

    def _lock(self, attempt_id: str) -> asyncio.Lock:
        return self._locks.setdefault(attempt_id, asyncio.Lock())

    async def _mark(self, mark: Mark) -> None:
        att = mark.attempt
        try:
            async with self._lock(att.attempt_id):
                wanted = await self.store.mark_attempt(att.attempt_id, mark.status, **mark.fields)
        except Exception as exc:
            log.warning(
                "attempt.mark_failed", attempt_id=att.attempt_id, error=f"{type(exc).__name__}: {exc}"[:200]
            )
            return
        if not wanted and att.channel_id in self.runs:
            # Cancelled, recovered or claimed anew while it rang: end the call, dial nothing more.
            log.info("attempt.hangup_unwanted", request_id=att.request_id, attempt_id=att.attempt_id)
            with contextlib.suppress(AmiError):
                await self.ami.action({"Action": "Hangup", "Channel": att.channel_id})

    async def _save_unsaved(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.unsaved or loop.time() < self._save_after:
            return
        async with self._saving:
            await self._save_all(loop)

    async def _save_all(self, loop: asyncio.AbstractEventLoop) -> None:
        for attempt_id, ended in list(self.unsaved.items()):
            try:
                async with self._lock(attempt_id):
                    done = await self.store.finish_attempt(
                        attempt_id,
                        ended.outcome,
                        self.clock(),
                        failover=OperatorFailover(self.cfg.operator_tries, self.cfg.operator_retry_delay),
                        **ended.fields,
                    )
            except Exception as exc:
                log.error(
                    "attempt.outcome_unsaved",
                    attempt_id=attempt_id,
                    outcome=ended.outcome.value,
                    error=f"{type(exc).__name__}: {exc}"[:200],
                    retry_in_s=self._save_delay,
                )
                self._save_after = loop.time() + self._save_delay
                self._save_delay = min(self._save_delay * 2, SAVE_RETRY[1])
                return
            self._save_delay = SAVE_RETRY[0]
            self.unsaved.pop(attempt_id, None)
            self._locks.pop(attempt_id, None)
            self.finished.set()
            self._log_outcome(ended, done)

    def _log_outcome(self, ended: Ended, done: Finished | None) -> None:
        if done is None:
            return
        att = ended.attempt
        log.info(
            "attempt.outcome",
            request_id=att.request_id,
            attempt_id=att.attempt_id,
            try_no=att.try_no,
            operator=att.operator,
            number=self._num(att.number),
            outcome=ended.outcome.value,
            counted=done.counted,
            request_status=done.request_status,
            next_due=done.due_at.isoformat() if done.due_at else None,
            close_reason=done.close_reason,
            stale=done.stale or None,
        )
        if self.on_finished is not None:
            self.on_finished(att, done)

    async def _renew_leases(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.runs or loop.time() - self._leases_renewed < self.store.attempt_lease.total_seconds() / 4:
            return
        try:
            await self.store.renew_leases(self.clock())
            self._leases_renewed = loop.time()
        except Exception as exc:
            log.warning("attempt.lease_renew_failed", error=f"{type(exc).__name__}: {exc}"[:200])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- AMI events for our calls ----------------------------------------------------

    def on_event(self, ev: dict[str, str]) -> None:
        self.apply(self.tracker.feed(ev, self.clock()))
        if ev.get("Event") == "Hangup" and self.runs:
            self.wake.set()  # a deadline may have moved closer

    # -- restart and reconnect -------------------------------------------------------

    async def reconcile(self, live: set[str] | None = None, asked_at: datetime | None = None) -> None:
        """Before dialling anything new: match attempts left in flight, ours or a dead node's on
        this PBX, against the live channels; one still up is followed, one gone is result_lost."""
        asked_at = asked_at or self.clock()
        if live is None:
            live = await self.live_channel_ids()
        now = self.clock()
        # Attempts we follow whose channel vanished during an AMI gap.
        self.apply(self.tracker.resync(live, asked_at, now))
        await self._take_over(live, now)
        await self._save_unsaved()
        await self.store.release_stale_claims(now)
        self._orphans_checked = asyncio.get_running_loop().time()
        self.reconciled = True
        self.wake.set()

    async def _take_over(self, live: set[str] | None, now: datetime) -> None:
        """Follow or end the attempts in flight that nobody follows: ours after a restart, or a
        node's whose lease ran out. ``live`` None: ask the PBX, if there is anything to ask about."""
        rows = [
            r
            for r in await self.store.in_flight(now)
            if r.channel_id not in self.runs and r.id not in self.unsaved
        ]
        if rows and live is None:
            live = await self.live_channel_ids()
        for row in rows:
            if not await self.store.take_over(row.id, now):
                continue  # another node was quicker
            att = Attempt(
                row.id,
                row.channel_id,
                row.request_id,
                row.number,
                row.operator,
                row.try_no,
                started_at=row.started_at,
                status=AttemptStatus(row.status),
                operator_answered_at=row.operator_answered_at,
                client_answered_at=row.client_answered_at,
            )
            self.apply(self.tracker.adopt(att, now))
            if live is not None and row.channel_id in live:
                self.pool.reserve(att.operator, now.timestamp())
                log.info(
                    "attempt.reattached",
                    request_id=att.request_id,
                    attempt_id=att.attempt_id,
                    number=self._num(att.number),
                    status=row.status,
                    node=row.node,
                )
                continue
            actions = self.tracker.gone(att.channel_id, now)
            ended = [a for a in actions if isinstance(a, Ended)]
            log.warning(
                "attempt.reconciled",
                request_id=att.request_id,
                attempt_id=att.attempt_id,
                number=self._num(att.number),
                was=row.status,
                node=row.node,
                outcome=ended[0].outcome.value if ended else None,
            )
            self.apply(actions)

    async def _check_orphans(self) -> None:
        """Now and then: another node's attempts whose lease ran out are ours to finish."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._orphans_checked < self.store.attempt_lease.total_seconds() / 2:
            return
        self._orphans_checked = loop.time()
        try:
            await self._take_over(None, self.clock())
        except Exception as exc:
            log.warning("attempt.takeover_failed", error=f"{type(exc).__name__}: {exc}"[:200])

    async def live_channel_ids(self) -> set[str]:
        return channel_ids(await self.ami.list_action({"Action": "CoreShowChannels"}))

    def unsaved_outcomes(self) -> list[dict[str, Any]]:
        """For the status: outcomes known but not yet stored."""
        return [
            {
                "request_id": e.attempt.request_id,
                "attempt_id": e.attempt.attempt_id,
                "outcome": e.outcome.value,
                "number": self._num(e.attempt.number),
            }
            for e in self.unsaved.values()
        ]

    async def drain(self, grace: timedelta) -> bool:
        """Stop taking new attempts; wait for the ones in flight. True if all finished and stored."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace.total_seconds()
        while (self.runs or self.unsaved) and loop.time() < deadline:
            self.finished.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), min(1.0, deadline - loop.time()))
        return not (self.runs or self.unsaved)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task


def whisper(cfg: DialerConfig, reason: str, queue: str | None = None) -> str:
    """What the operator hears first; a queue's own intro or custom prompts replace the global ones."""
    own = cfg.for_queue(queue)
    custom = own.whisper_custom if own.whisper_custom is not None else cfg.whisper_custom
    intro = own.whisper_intro if own.whisper_intro is not None else cfg.whisper_intro
    prompts = list(custom) or [*intro, *cfg.whisper_reasons.get(reason, [])]
    return "&".join(prompts) or "beep"


class AttemptRef(Protocol):
    """What :func:`originate_fields` needs of an attempt."""

    attempt_id: str
    channel_id: str
    operator: str
    try_no: int


def originate_fields(
    cfg: DialerConfig,
    run: AttemptRef,
    name: str,
    number: E164,
    reason: str,
    did: str | None = None,
    queue: str | None = None,
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
            f"CBD_OUTCID={caller_id_for(did, cfg.callerid_by_did, _queue_callerid(cfg, queue))}",
            f"CBD_WHISPER={whisper(cfg, reason, queue)}",
            f"CBD_TRY={run.try_no}",
            *(["CBD_AMD=1"] if cfg.amd else []),
        ],
    }


def _queue_callerid(cfg: DialerConfig, queue: str | None) -> str:
    own = cfg.for_queue(queue).outbound_callerid
    return own if own is not None else cfg.outbound_callerid


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
