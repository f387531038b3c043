"""The intake service: every contact from every source goes through here, and only here is stored.

Admission is synchronous: the number is decided and the abuse-limit slots are taken
before the first await, so concurrent contacts cannot all pass a check that none of
them has counted yet. Storing is done by one writer task in arrival order, so merges
and recoveries never race each other. When the database cannot take an item, the
item goes to the spool (fsync'd local file) and everything after it follows it there
until a replay task has put the spool back into the database, head first. AMI reading
only appends to an in-memory queue, and the dialer never waits on either task.

Direct sources (AGI, HTTP, MQTT) await the outcome: stored, spooled (the request is
safe on disk, its id not known yet) or :class:`IntakeUnavailable` when the database is
down and the spool is full. ``callbackd requests add`` is another process: it writes
through the store itself, and admin requests are exempt from the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from callbackd.adapters.db import transient
from callbackd.adapters.spool import Recovery, Spool, Spooled, SpoolFull, as_dict
from callbackd.adapters.store import ContactResult, IntakeBatch, Store
from callbackd.domain.detection import Answered, CallEnded, CallTrack, Missed, OutboundAnswered
from callbackd.domain.errors import IntakeUnavailable, InvalidNumber
from callbackd.domain.intake import (
    WEB_SOURCES,
    Contact,
    Decision,
    Disposition,
    IntakeRules,
    Source,
    decide,
    limit,
)
from callbackd.domain.limits import AbuseGuard
from callbackd.domain.phone import mask, parse_caller_id

log = structlog.get_logger("callbackd.intake")

# Replay backoff while the database stays away.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 5.0
# Replayed lines are dropped from the file (a rewrite of the rest) in batches of at least this
# many, or a quarter of the spool, so a long replay rewrites it a few times, not once per batch;
# a crash replays at most one batch again (harmless: storing is idempotent).
DROP_BATCH = 200
# Group commit: the writer stores what is queued when it turns to the queue, up to this many
# items in one transaction. It never waits for a batch to fill: under a trickle every item is
# its own transaction, under a burst the items that queued during one commit share the next.
# A batch takes a few round trips to the database whatever its size, and while AMI is read each
# waits for a read to end: under a burst the batch size is what lets the writer keep up.
WRITE_BATCH = 1000
# The writer lets the event loop run after this many items of a batch, so a big batch holds up
# reading AMI no longer than a small one did.
YIELD_EVERY = 200
# A spooled entry the database keeps refusing (not a connection problem) is set aside after this many tries.
MAX_REFUSED_TRIES = 3
# How often "spool full" is repeated in the log while it lasts.
FULL_LOG_EVERY_S = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def _nothing() -> None:
    """No result to give, or nothing to tell after the commit."""


def parse_caller_id_or_none(raw: str, region: str) -> str | None:
    try:
        number = parse_caller_id(raw, region)
    except InvalidNumber:
        return None
    return str(number) if number is not None else None


@dataclass
class _Job:
    entry: Spooled
    slot: tuple[str, datetime] | None = None  # (number, taken at) while a limit slot is held
    done: asyncio.Future[ContactResult] | None = None


@dataclass
class Link:
    """The database as the intake last found it."""

    up: bool | None = None  # None: not tried yet
    since: datetime | None = None
    error: str | None = None
    failures: int = 0


@dataclass
class Backlog:
    queued: int
    spooled: int
    oldest: datetime | None
    spool_full: bool
    link: Link = field(default_factory=Link)

    @property
    def items(self) -> int:
        return self.queued + self.spooled


class IntakeService:
    def __init__(
        self,
        store: Store,
        spool: Spool,
        rules: IntakeRules,
        guard: AbuseGuard,
        *,
        mask_numbers: bool = True,
        on_request: Callable[[], None] = lambda: None,
        on_call: Callable[[str | None], None] = lambda missed: None,
        on_recovered: Callable[[str, int], None] = lambda how, n: None,
        clock: Callable[[], datetime] = utcnow,
        retry_initial: float = RETRY_INITIAL_S,
        retry_max: float = RETRY_MAX_S,
    ) -> None:
        self.store = store
        self.spool = spool
        self.rules = rules
        self.guard = guard
        self.mask_numbers = mask_numbers
        self.on_request = on_request  # a request was stored: wake the dialer
        self.on_call = on_call  # a call row was stored (its miss reason, or None): metrics
        self.on_recovered = on_recovered  # requests closed by a recovery, and how: metrics
        self.clock = clock
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        # Contacts refused by the number rules or the abuse limits, by reason.
        self.refusals: Counter[str] = Counter()
        self.link = Link()
        self.spool_full_events = 0
        self.replayed = 0  # entries put back into the database since start
        self.closed = False
        self._queue: deque[_Job] = deque()
        self._current: list[_Job] = []  # taken from the queue, not yet stored or spooled
        self.batches = 0  # transactions of more than one item (group commits) since start
        self.batch_fallbacks = 0  # of those, the ones that failed and were stored item by item
        self._arrived = asyncio.Event()
        self._idle_now = asyncio.Event()  # set each time the writer finishes a job
        self._spooled = asyncio.Event()
        self._room = asyncio.Event()
        self._replay_pos = 0  # spool entries [0:pos] are stored, not yet dropped from the file
        self._refused_tries = 0
        self._full_logged = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        left = len(self.spool)
        if left:
            log.warning(
                "spool.found", items=left, path=str(self.spool.path), hint="replaying into the database"
            )
            self._spooled.set()
        self._tasks = [
            asyncio.create_task(self._writer(), name="intake"),
            asyncio.create_task(self._replayer(), name="intake-replay"),
        ]

    async def close(self, timeout: float, force: asyncio.Event | None = None) -> None:
        """Store what is queued, for at most *timeout* seconds (less if *force* is set); spool the rest.

        Called once every source is closed: nothing is lost, whatever the database does.
        """
        self.closed = True
        waits = [asyncio.create_task(self.idle())]
        if force is not None:
            waits.append(asyncio.create_task(force.wait()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for t in waits:
            t.cancel()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        left = self._current + list(self._queue)
        self._current = []
        self._queue.clear()
        for job in left:
            # Beyond the bound if need be: the bound protects the disk from a long outage,
            # not from the last few contacts of a shutdown.
            self._spool(job, force=True)
        self._drop_replayed()
        if left or len(self.spool):
            log.warning("intake.spooled_at_exit", spooled=len(self.spool), path=str(self.spool.path))
        self.spool.close()

    async def idle(self) -> None:
        """Until every queued item is stored or spooled (the spool may still wait for replay)."""
        while self._queue or self._current:
            self._idle_now.clear()
            await self._idle_now.wait()

    # -- admission (no await before the slot is taken) ---------------------------------

    def put(self, item: Any) -> None:
        """A detector output (Missed, Answered, OutboundAnswered, CallEnded): queued, never awaited."""
        if isinstance(item, Missed):
            log.info(
                "call.missed",
                linkedid=item.linkedid,
                number=self._num(item.caller_num),
                reason=item.reason.value,
                queue=item.queue,
                waited=item.waited,
            )
            contact = Contact(
                source=Source.AMI,
                source_ref=item.linkedid,
                raw_number=item.caller_num,
                reason=item.reason.value,
                at=item.at,
                name=item.caller_name,
                waited=item.waited,
                caller_gave_up=item.caller_gave_up,
                did=item.did,
                queue=item.queue,
            )
            self._enqueue(self._admit(contact))
        elif isinstance(item, Answered):
            self._enqueue(
                _Job(Spooled(Recovery(item.caller_num, item.at, "client_called_in"), None, item.at))
            )
        elif isinstance(item, OutboundAnswered):
            self._enqueue(_Job(Spooled(Recovery(item.number, item.at, "operator_called"), None, item.at)))
        elif isinstance(item, CallEnded):
            self._enqueue(_Job(Spooled(item.call, None, self.clock())))

    async def submit(self, contact: Contact) -> ContactResult:
        """Every direct source ends here: the result once stored or spooled."""
        job = self._admit(contact)
        if self.closed or (self.link.up is False and self.spool.full):
            self._give_back(job)
            self._say_full()
            raise IntakeUnavailable("the database is unreachable and the spool is full")
        job.done = asyncio.get_running_loop().create_future()
        self._enqueue(job)
        return await asyncio.shield(job.done)

    def _admit(self, contact: Contact) -> _Job:
        now = self.clock()
        decision = decide(contact, self.rules)
        refusal: str | None = None
        slot = None
        if decision.schedules and contact.source is not Source.ADMIN:
            number = str(decision.number)
            refusal = self.guard.take(number, now)
            if refusal is None:
                slot = (number, now)
        return _Job(Spooled(contact, refusal, now), slot)

    def _enqueue(self, job: _Job) -> None:
        self._queue.append(job)
        self._arrived.set()

    # -- the writer ----------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            if len(self._queue) > 1 and not len(self.spool) and self.link.up is not False:
                n = min(len(self._queue), WRITE_BATCH)
                self._current = [self._queue.popleft() for _ in range(n)]
                await self._take_batch(self._current)
            else:
                job = self._queue.popleft()
                self._current = [job]
                await self._take_one(job)
            self._current = []
            self._idle_now.set()

    async def _take_one(self, job: _Job) -> None:
        try:
            await self._take(job)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: keep the job on disk rather than lose it
            log.exception("intake.failed", item=type(job.entry.item).__name__)
            self._spool_anyway(job)

    async def _take_batch(self, jobs: list[_Job]) -> None:
        """Store *jobs* in one transaction. If the database is away they are spooled, in order.
        If it refuses the batch, none of it is kept and each job is taken again on its own (its
        own transaction), so one bad item costs the batch its group commit, never the others."""
        done: list[tuple[_Job, Callable[[], ContactResult | None], Callable[[], None]]] = []
        try:
            async with self.store.unit() as s:
                batch = self.store.batch(s)
                numbers, contacts, decisions = self._batch_reads(jobs)
                await batch.prefetch(numbers, contacts)
                for i, job in enumerate(jobs, 1):
                    result, after = await self._store_in(job.entry, batch, decisions.get(id(job.entry)))
                    done.append((job, result, after))
                    if i % YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # let AMI be read: a batch's items take a while
                await batch.finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if transient(exc):  # the database is away: spool them all, in order, as one item would be
                self._link_down(exc)
                for job in jobs:
                    await self._spool_or_wait(job)
                return
            self.batch_fallbacks += 1
            log.warning(
                "intake.batch_failed",
                items=len(jobs),
                error=(str(exc).splitlines() or [type(exc).__name__])[0][:200],
                hint="storing its items one by one",
            )
            for job in jobs:
                await self._take_one(job)
            return
        self.batches += 1
        self._link_up()
        for job, result, after in done:
            after()
            self._finish(job, result())

    def _batch_reads(self, jobs: list[_Job]) -> tuple[set[str], list[Contact], dict[int, Decision]]:
        """The numbers a batch's contacts and recoveries touch, its contacts, and their decisions."""
        numbers: set[str] = set()
        contacts: list[Contact] = []
        decisions: dict[int, Decision] = {}
        for job in jobs:
            item = job.entry.item
            if isinstance(item, Contact):
                decision = decisions[id(job.entry)] = decide(item, self.rules)
                contacts.append(item)
                if decision.number is not None:
                    numbers.add(str(decision.number))
            elif isinstance(item, Recovery):
                parsed = parse_caller_id_or_none(item.raw_number, self.rules.region)
                if parsed is not None:
                    numbers.add(parsed)
        return numbers, contacts, decisions

    async def _take(self, job: _Job) -> None:
        if len(self.spool):  # something older waits for the database: keep the order
            await self._spool_or_wait(job)
            return
        try:
            result = await self._store(job.entry)
        except Exception as exc:
            if not transient(exc):
                log.exception("intake.store_failed", item=type(job.entry.item).__name__)
            self._link_down(exc)
            await self._spool_or_wait(job)
            return
        self._link_up()
        self._finish(job, result)

    async def _spool_or_wait(self, job: _Job) -> None:
        """Spool the job; while the spool is full a call record waits here (in memory) for room."""
        while not self._spool(job):
            if job.done is not None:
                return  # told IntakeUnavailable
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FULL_LOG_EVERY_S):
                    await self._room.wait()

    def _spool_anyway(self, job: _Job) -> None:
        if not self._spool(job, force=True):
            log.error("intake.lost", item=as_dict(job.entry))

    def _spool(self, job: _Job, *, force: bool = False) -> bool:
        """Append to the spool; False (and the caller told) when it cannot be written."""
        entry = job.entry
        if isinstance(entry.item, Contact) and entry.refusal and entry.item.source in WEB_SOURCES:
            # Over the limits and the database cannot say whether it would merge: refuse, keep nothing.
            self._refused(entry.item, Decision(Disposition.RATE_LIMITED, None, "", entry.refusal))
            self._resolve(job, ContactResult(None, None, disposition=Disposition.RATE_LIMITED))
            return True
        try:
            self.spool.append(entry, force=force)
        except (SpoolFull, OSError) as exc:
            self._say_full(str(exc))
            if job.done is not None:
                self._give_back(job)
                if not job.done.done():
                    job.done.set_exception(IntakeUnavailable(str(exc)))
            return False
        self._spooled.set()
        if isinstance(entry.item, Contact):
            decision = decide(entry.item, self.rules)
            if entry.refusal:
                decision = limit(decision, entry.refusal)
            log.info(
                "contact.spooled",
                source=entry.item.source.value,
                ref=entry.item.source_ref,
                spooled=len(self.spool),
            )
            # A spooled contact keeps its limit slot: whether it opens a request is known once stored.
            self._resolve(job, ContactResult(None, None, disposition=decision.disposition, spooled=True))
        return True

    # -- the replay ----------------------------------------------------------------------

    async def _replayer(self) -> None:
        delay = self.retry_initial
        while True:
            if self._replay_pos >= len(self.spool):
                self._drop_replayed()
                self._spooled.clear()
                await self._spooled.wait()
                continue
            entry = self.spool.items[self._replay_pos]
            try:
                result = await self._store(entry)
            except Exception as exc:
                if transient(exc):
                    self._link_down(exc)
                    self._drop_replayed()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                self._refused_tries += 1
                if self._refused_tries < MAX_REFUSED_TRIES:
                    await asyncio.sleep(delay)
                    continue
                log.error("spool.rejected", item=as_dict(entry), error=str(exc)[:300])
                self.spool.reject(entry, str(exc)[:300])
                result = None
            delay = self.retry_initial
            self._refused_tries = 0
            self._link_up()
            self._replay_pos += 1
            self.replayed += 1
            self._finish(_Job(entry), result)
            if self._replay_pos >= max(DROP_BATCH, len(self.spool) // 4):
                self._drop_replayed()

    def _drop_replayed(self) -> None:
        if self._replay_pos:
            n, self._replay_pos = self._replay_pos, 0
            self.spool.drop_head(n)
            self._room.set()
            if not len(self.spool):
                log.info("spool.replayed", total=self.replayed)

    # -- storing one item ----------------------------------------------------------------

    async def _store(self, entry: Spooled) -> ContactResult | None:
        """One item in its own transaction."""
        result, after = await self._store_in(entry)
        after()
        return result()

    async def _store_in(
        self, entry: Spooled, batch: IntakeBatch | None = None, decision: Decision | None = None
    ) -> tuple[Callable[[], ContactResult | None], Callable[[], None]]:
        """Store *entry* (as part of *batch* when given, written by its ``finish`` before the commit).
        Returns what gives its result once written, and what to tell once it is committed."""
        item = entry.item
        if isinstance(item, Contact):
            if decision is None:
                decision = decide(item, self.rules)
            # Over the limits: refused only if it would open a new request (a merge adds no call).
            if entry.refusal and not (decision.number and await self._has_open(str(decision.number), batch)):
                decision = limit(decision, entry.refusal)
            if decision.disposition is Disposition.RATE_LIMITED and item.source in WEB_SOURCES:
                refused = ContactResult(None, None, disposition=decision.disposition)
                return lambda: refused, _nothing
            if batch is not None:
                return await batch.record_contact(item, decision), _nothing
            stored = await self.store.record_contact(item, decision)
            return lambda: stored, _nothing
        if isinstance(item, CallTrack):
            number = parse_caller_id_or_none(item.caller_num, self.rules.region)
            miss = item.missed.value if item.missed else None
            if batch is None:
                await self.store.record_call(item, number)
            else:
                batch.add_call(self.store.call_row(item, number))
            return _nothing, lambda: self.on_call(miss)
        parsed = parse_caller_id_or_none(item.raw_number, self.rules.region)
        if parsed is None:
            return _nothing, _nothing
        if batch is None:
            closed = await self.store.recover(parsed, item.at, item.how)
        else:
            closed = await batch.recover(parsed, item.at, item.how)

        def told() -> None:
            self.on_recovered(item.how, len(closed))
            if closed:
                log.info("request.recovered", request_ids=closed, number=self._num(parsed), how=item.how)

        return _nothing, told

    async def _has_open(self, number: str, batch: IntakeBatch | None) -> bool:
        if batch is None:
            return await self.store.has_open_request(number)
        return await batch.has_open_request(number)

    def _finish(self, job: _Job, result: ContactResult | None) -> None:
        item = job.entry.item
        if result is None or not isinstance(item, Contact):
            return
        if job.slot is not None and not result.created:
            self._give_back(job)
        disposition = result.disposition
        if result.duplicate:
            log.info("contact.duplicate", source=item.source.value, ref=item.source_ref)
        elif disposition is Disposition.SCHEDULE:
            log.info(
                "request.stored",
                request_id=result.request_id,
                number=self._num(str(decide(item, self.rules).number)),
                merged=result.merged,
                source=item.source.value,
                reason=item.reason,
            )
            self.on_request()
        elif disposition in (Disposition.BLOCKED, Disposition.RATE_LIMITED):
            decision = decide(item, self.rules)
            self._refused(
                item, Decision(disposition, decision.number, "", job.entry.refusal or decision.detail)
            )
        elif disposition is not None:
            log.info(
                "contact.not_scheduled",
                disposition=disposition.value,
                detail=decide(item, self.rules).detail,
                source=item.source.value,
            )
        self._resolve(job, result)

    # -- bookkeeping ---------------------------------------------------------------------

    def _resolve(self, job: _Job, result: ContactResult) -> None:
        if job.done is not None and not job.done.done():
            job.done.set_result(result)

    def _give_back(self, job: _Job) -> None:
        if job.slot is not None:
            self.guard.give_back(*job.slot)
            job.slot = None

    def _refused(self, contact: Contact, decision: Decision) -> None:
        self.refusals[decision.detail] += 1
        log.info(
            "contact.refused",
            reason=decision.detail,
            disposition=decision.disposition.value,
            number=self._num(str(decision.number) if decision.number else contact.raw_number),
            source=contact.source.value,
            count=self.refusals[decision.detail],
        )

    def _link_down(self, exc: BaseException) -> None:
        text = (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[0][:300]
        self.link.failures += 1
        if self.link.up is not False:
            self.link.up, self.link.since = False, self.clock()
            log.error("db.unreachable", error=text, hint="contacts go to the spool until it is back")
        self.link.error = text

    def _link_up(self) -> None:
        if self.link.up is not True:
            was_down = self.link.up is False
            self.link.up, self.link.since, self.link.error = True, self.clock(), None
            if was_down:
                log.info("db.reachable", spooled=len(self.spool) - self._replay_pos)

    def _say_full(self, why: str = "") -> None:
        self.spool_full_events += 1
        now = asyncio.get_running_loop().time()
        if now - self._full_logged >= FULL_LOG_EVERY_S:
            self._full_logged = now
            log.error(
                "spool.full",
                items=len(self.spool),
                max_items=self.spool.max_items,
                path=str(self.spool.path),
                error=why or None,
                hint="database unreachable: new web leads and AGI requests are refused until it is back",
            )

    def _num(self, number: str) -> str:
        return mask(number) if self.mask_numbers else number

    # -- what status and metrics show ----------------------------------------------------

    def backlog(self) -> Backlog:
        """What waits for the database. Items queue in arrival order, each stamped as it arrives,
        so the oldest of each part is its head: this costs the same with 10 or 10,000 queued
        (status and metrics ask often, on the thread that reads AMI)."""
        times = [
            part[0].entry.queued_at
            for part in (self._current, self._queue)
            if part and part[0].entry.queued_at is not None
        ]
        if self._replay_pos < len(self.spool):
            head = self.spool.items[self._replay_pos].queued_at
            if head is not None:
                times.append(head)
        return Backlog(
            queued=len(self._current) + len(self._queue),
            spooled=len(self.spool) - self._replay_pos,
            oldest=min(times) if times else None,
            spool_full=self.spool.full,
            link=self.link,
        )
