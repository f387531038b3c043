"""Composition root: builds every adapter, wires them, runs until told to stop, then drains.

Each part's cleanup goes on one AsyncExitStack, so start-up can fail at any step and
still leave nothing behind. Phases after the first SIGTERM: stop new attempts and
wait for the ones in flight (AMI still read, so misses keep arriving and are stored),
close AMI and every lead listener (no new work), then store or spool every queued
contact. A second SIGTERM cuts each phase short, through the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from callbackd import config as config_mod
from callbackd import logs
from callbackd import reload as reload_mod
from callbackd.adapters import db
from callbackd.adapters import status as status_file
from callbackd.adapters.ami import AmiClient, AmiError
from callbackd.adapters.spool import Spool
from callbackd.adapters.store import ContactResult, Finished, Store
from callbackd.config import Config, ConfigError
from callbackd.dialer import Dialer, Run
from callbackd.domain import statusline
from callbackd.domain.backoff import Backoff
from callbackd.domain.detection import DetectionRules, Detector
from callbackd.domain.intake import Contact, IntakeRules
from callbackd.domain.limits import AbuseGuard, AbuseLimits
from callbackd.domain.operators import OperatorPool
from callbackd.domain.pbx import UnsupportedAsterisk, check_asterisk
from callbackd.domain.phone import NumberRules, mask
from callbackd.domain.states import RequestStatus
from callbackd.intake import IntakeService
from callbackd.lifecycle import Lifecycle, notify, trim_heap, watchdog
from callbackd.resync import on_login

if TYPE_CHECKING:
    from callbackd.adapters.metrics import Live, Metrics

log = structlog.get_logger("callbackd")

CLAIM_LEASE = timedelta(hours=2)
# How often the status loop looks for a change worth rewriting the status file.
STATUS_CHECK = 1.0
# While AMI or the database is awaited at start: the STATUS= line is refreshed this often, and each
# refresh moves systemd's start timeout (TimeoutStartSec) EXTEND_START seconds ahead.
WAIT_REPORT = 5.0
EXTEND_START = 30.0
# How often the open requests shown in STATUS= are counted again.
COUNT_INTERVAL = 10.0

try:
    VERSION = metadata.version("callbackd")
except metadata.PackageNotFoundError:  # run from a source tree without pip install
    VERSION = "unknown"


def utcnow() -> datetime:
    return datetime.now(UTC)


# The AMI events the daemon reads, and what each one feeds: the operator pool (queue members,
# callers waiting), the dialer (its own calls' progress, and a look for free operators when a
# member's state changes) and the missed-call detector. This table is the routing: any other event
# feeds nothing, and the AMI client drops it unparsed (only the event-lag metric misses it).
POOL, DIALER, WAKE, DETECTOR = 1, 2, 4, 8
AMI_ROUTES: dict[str, int] = {
    # calls: their start, caller number, progress and end
    "Newchannel": DETECTOR,
    "NewCallerid": DETECTOR,
    "Newstate": DIALER,
    "DialBegin": DIALER | DETECTOR,
    "DialEnd": DETECTOR,
    "BridgeEnter": DIALER,
    "HangupRequest": DETECTOR,
    "Hangup": DIALER | DETECTOR,
    "UserEvent": DIALER | DETECTOR,  # CallbackdResult (an attempt's verdict), CallbackdMark
    # queues: callers, and the members who answer them
    "QueueCallerJoin": POOL | DETECTOR,
    "QueueCallerLeave": POOL | WAKE | DETECTOR,  # the operators it held may take callbacks now
    "QueueCallerAbandon": DETECTOR,
    "QueueParams": POOL,
    "AgentCalled": DETECTOR,
    "AgentConnect": DETECTOR,
    "QueueMember": POOL,
    "QueueMemberStatus": POOL | WAKE,
    "QueueMemberAdded": POOL,
    "QueueMemberRemoved": POOL,
    "QueueMemberPause": POOL | WAKE,
}


def intake_rules(cfg: Config) -> IntakeRules:
    n = cfg.numbers
    return IntakeRules(
        region=n.default_region,
        numbers=NumberRules(
            blacklist=frozenset(n.blacklist),
            blocked_prefixes=tuple(n.blocked_prefixes),
            allowed_prefixes=tuple(n.allowed_prefixes),
        ),
        short_abandon=cfg.detection.short_abandon,
        source_queues=dict(cfg.dialer.source_queues),
    )


def abuse_limits(cfg: Config) -> AbuseLimits:
    lim = cfg.limits
    return AbuseLimits(
        new_requests_per_number=lim.new_requests_per_number,
        per_number_window=lim.per_number_window,
        new_requests_global=lim.new_requests_global,
        global_window=lim.global_window,
        attempts_per_hour=lim.attempts_per_hour,
    )


def detection_rules(cfg: Config) -> DetectionRules:
    d = cfg.detection
    return DetectionRules(
        inbound_contexts=frozenset(d.inbound_contexts),
        queues=frozenset(d.queues),
        dids=frozenset(d.dids),
        internal_max_digits=d.internal_max_digits,
        own_numbers=frozenset(d.own_numbers),
        outbound_contexts=frozenset(d.outbound_contexts),
    )


class NoMetrics:
    """What the daemon feeds its figures to when nothing can read them: Prometheus metrics are
    served only on the HTTP listener (GET /metrics, a setting that needs a restart), so without it
    nothing is counted and prometheus_client (with the HTTP server, URL and e-mail modules it
    imports: about 2 MB of idle RSS) is never loaded."""

    def event_received(self, event: Any, now: float | None = None) -> None:
        pass

    def attempt_started(
        self, request_id: int, created_at: datetime, started_at: datetime, first: bool
    ) -> None:
        pass

    def attempt_finished(self, outcome: str, reached: bool = False) -> None:
        pass

    def call_recorded(self, missed_reason: str | None) -> None:
        pass

    def recovered_by(self, how: str, n: int) -> None:
        pass


class StopWaiting(Exception):
    """SIGTERM or SIGINT while start-up still waits for AMI or the database: stop, exit 0."""


class Daemon:
    def __init__(self, cfg: Config, config_path: Path | None = None) -> None:
        self.cfg = cfg
        # Re-read on SIGHUP; None (tests) leaves reload to a config passed in.
        self.config_path = config_path
        self.state = "starting"  # running, draining, stopped: shown by `callbackd status`
        self.started_at = utcnow()
        self.reloaded_at: datetime | None = None
        self.metrics: Metrics | NoMetrics = NoMetrics()
        if cfg.http.enabled and cfg.http.metrics:
            from callbackd.adapters.metrics import Metrics

            self.metrics = Metrics(self._live, version=VERSION)
        self.lifecycle = Lifecycle()
        self._status_error: str | None = None
        self._agi: Any = None
        self._mqtt: Any = None
        self.detector = Detector(detection_rules(cfg))
        self._retention_at: datetime | None = None
        self._folded_at: datetime | None = None  # figures_touched rows folded (see reports.figures)
        self.rules = intake_rules(cfg)
        self.guard = AbuseGuard(abuse_limits(cfg))
        self.pool = OperatorPool(cfg.dialer.queues, int(cfg.dialer.wrapup.total_seconds()))
        self.asterisk_version: str | None = None
        self.status_line: str | None = None
        self._told = float("-inf")  # when start-up last told systemd what it waits for
        self.open_requests: int | None = None
        # `run` migrates in a child interpreter (db.upgrade_apart): Alembic never enters the daemon.
        # Tests that build a daemon migrate in their own process.
        self.migrate_apart = False
        self.store: Store
        self.intake: IntakeService
        self.ami: AmiClient
        self.dialer: Dialer

    def _num(self, number: str) -> str:
        return mask(number) if self.cfg.log.mask_numbers else number

    @property
    def refusals(self) -> dict[str, int]:
        intake: IntakeService | None = getattr(self, "intake", None)
        return dict(intake.refusals) if intake is not None else {}

    async def submit(self, contact: Contact) -> ContactResult:
        """What every direct source (AGI, HTTP, MQTT) calls: the intake service's submit."""
        return await self.intake.submit(contact)

    # -- wiring --------------------------------------------------------------------------

    async def build(self, stack: AsyncExitStack, *, ami: Any = None) -> None:
        """Database, spool, intake service, AMI client and dialer, nothing connected or listening.

        ``run`` starts from here; tests build the daemon the same way (``ami`` replaces the
        AMI client the dialer talks to). The intake's writer runs from here on, and its
        close (spooling whatever is left) is on *stack*.
        """
        engine = db.make_engine(self.cfg.database.url)
        stack.push_async_callback(engine.dispose)
        revision, migrated = await self._wait_for_database(engine)
        log.info("db.migrated", revision=revision, upgraded=migrated)
        self.store = Store(
            engine,
            node=self.cfg.node,
            pbx=self.cfg.pbx_identity(),
            schedule=self.cfg.schedule_rules(),
            claim_lease=CLAIM_LEASE,
        )
        if self.cfg.webhooks.endpoints:
            from callbackd.adapters import webhooks

            endpoints, policy = webhooks.from_config(self.cfg)
            self.store.outbox = webhooks.Outbox(endpoints, policy)
            dispatcher = webhooks.Dispatcher(engine, tuple(endpoints), policy)
            dispatcher.start()
            stack.push_async_callback(dispatcher.stop)  # after the dialer's drain: its events go too
        svc = self.cfg.service
        spool = Spool(svc.spool_file, svc.spool_max_items)
        spool.open()
        stack.callback(spool.close)
        self.intake = IntakeService(
            self.store,
            spool,
            self.rules,
            self.guard,
            mask_numbers=self.cfg.log.mask_numbers,
            on_request=lambda: self.dialer.wake.set(),
            on_call=self.metrics.call_recorded,
            on_recovered=self.metrics.recovered_by,
        )
        self.intake.link.up, self.intake.link.since = True, utcnow()  # just migrated through it
        self.intake.start()
        stack.push_async_callback(self._close_intake)
        a = self.cfg.ami
        self.ami = AmiClient(
            host=a.host,
            port=a.port,
            username=a.username,
            secret=self.cfg.ami_secret(),
            on_event=self.on_event,
            wanted=AMI_ROUTES,
            on_login=self.on_login,
            ping_interval=a.ping_interval.total_seconds(),
            ping_timeout=a.ping_timeout.total_seconds(),
            backoff=self.backoff(),
        )
        stack.push_async_callback(self.ami.close)
        self.dialer = Dialer(
            self.cfg.dialer,
            self.store,
            ami if ami is not None else self.ami,
            self.pool,
            mask_numbers=self.cfg.log.mask_numbers,
            guard=self.guard,
            on_started=self._attempt_started,
            on_finished=self._attempt_finished,
        )
        stack.push_async_callback(self.dialer.close)

    async def run(self) -> int:
        try:
            return await self._run()
        except StopWaiting:
            log.info("daemon.stopped", drained=True, in_flight=0, hint="stopped while waiting at start")
            return 0

    async def _run(self) -> int:
        self.lifecycle.install_hup(self._on_hup)
        # From the start: a stop while AMI or the database is awaited ends the wait, cleanly.
        self.lifecycle.install_stop()
        async with AsyncExitStack() as stack:
            stack.callback(self._stopped)
            stack.callback(self.lifecycle.uninstall)
            self.migrate_apart = True
            await self.build(stack)
            # The other inputs (FastAGI, HTTP, MQTT), closed right after AMI once the drain is over.
            sources = AsyncExitStack()
            stack.push_async_callback(sources.aclose)
            await self._wait_for_ami()
            await self._check_asterisk()
            if self.cfg.agi.enabled:
                from callbackd.adapters.agi import CallbackAgi

                agi = self._agi = CallbackAgi(self.submit, self.rules)
                server = await agi.serve(self.cfg.agi.host, self.cfg.agi.port)
                sources.push_async_callback(_close_server, server)
                log.info("agi.listening", host=self.cfg.agi.host, port=self.cfg.agi.port)
            tasks = [
                asyncio.create_task(self.dialer.run(), name="dialer"),
                asyncio.create_task(self._housekeeping(), name="housekeeping"),
                asyncio.create_task(watchdog(), name="watchdog"),
                asyncio.create_task(self._status_loop(), name="status"),
                asyncio.create_task(self._status_line_loop(), name="status-line"),
            ]
            stack.push_async_callback(_cancel, tasks)
            if self.cfg.reports.schedule:  # APScheduler is imported only when reports are scheduled
                from callbackd.adapters.scheduled import ReportScheduler

                reports = ReportScheduler(self.cfg)
                reports.start()
                stack.callback(reports.shutdown)
            await self._start_lead_intake(sources)
            self.state = "running"
            self.status_line = self._running_line()
            notify(f"READY=1\nSTATUS={self.status_line}")
            trim_heap()
            # Again once the resync after the login and the first turns are over.
            asyncio.get_running_loop().call_later(15.0, trim_heap)
            log.info(
                "daemon.ready",
                node=self.cfg.node,
                database=self.store.engine.url.render_as_string(hide_password=True),
            )
            await self.lifecycle.should_exit.wait()
            # Phase 1: no new attempts; the ones in flight end (AMI still read, misses still stored).
            self._draining()
            drained = await self._unless_forced(self.dialer.drain(self.cfg.service.drain_grace))
            # Phase 2: stop reading new work, AMI first.
            await self.ami.close()
            await sources.aclose()
            log.info("daemon.inputs_closed", queued=self.intake.backlog().queued)
            # Phase 3: every queued contact into the database, or the spool.
            await self._close_intake()
            if self.lifecycle.force_exit.is_set():
                log.warning("daemon.forced_exit", in_flight=len(self.dialer.runs))
                return 1
            log.info("daemon.stopped", drained=bool(drained), in_flight=len(self.dialer.runs))
        return 0

    # -- start-up that waits ----------------------------------------------------------

    def backoff(self) -> Backoff:
        """From 1 s, doubling, at most ami.reconnect_max, with some jitter (used for AMI and the database)."""
        cap = max(self.cfg.ami.reconnect_max.total_seconds(), 1.0)
        return Backoff(initial=1.0, factor=2.0, cap=cap, jitter=0.2)

    def _waiting(self, line: str) -> None:
        """Tell systemd what start-up waits for, and that it is still alive: push the start timeout on."""
        self._told = time.monotonic()
        if line != self.status_line:
            self.status_line = line
        notify(f"STATUS={line}\nEXTEND_TIMEOUT_USEC={int(EXTEND_START * 1e6)}")

    async def _wait_for_database(self, engine: Any) -> tuple[str | None, bool]:
        """Migrate if behind (Alembic only then, in a child interpreter when run); while the
        database does not answer (or is locked), retry with back-off, forever."""
        backoff = self.backoff()
        failures = 0
        while True:
            try:
                return await db.ensure_current(engine, apart=self.migrate_apart)
            except Exception as exc:
                if not db.database_away(exc):
                    raise
                failures += 1
                error = (str(getattr(exc, "orig", None) or exc).splitlines() or ["error"])[0][:200]
                delay = backoff.delay(failures, random.random())
                log.warning("db.waiting", attempt=failures, next_in_s=round(delay, 1), error=error)
                self._waiting(statusline.waiting_for_database(failures, delay, error))
                await engine.dispose()  # a fresh connection next time
                # Sleep in short steps so systemd's start timeout keeps moving.
                end = time.monotonic() + delay
                while (left := end - time.monotonic()) > 0:
                    await asyncio.sleep(min(left, WAIT_REPORT, 0.5))
                    if self.lifecycle.should_exit.is_set():
                        raise StopWaiting from None
                    if time.monotonic() < end and time.monotonic() - self._told >= WAIT_REPORT:
                        self._waiting(self.status_line or "waiting for the database")

    async def _wait_for_ami(self) -> None:
        """Connect and wait for the login, however long it takes; panoramisk retries after the back-off."""
        self.ami.connect()
        reported, told = 0, float("-inf")
        while not await self.ami.wait_login(0.5):
            if self.lifecycle.should_exit.is_set():
                raise StopWaiting
            changed = self.ami.failures != reported
            if changed:
                reported = self.ami.failures
                log.warning(
                    "ami.waiting",
                    address=self.ami.address,
                    attempt=self.ami.failures,
                    next_in_s=round(self.ami.next_try_in or 0, 1),
                    error=self.ami.last_error,
                )
            if changed or time.monotonic() - told >= WAIT_REPORT:
                told = time.monotonic()
                self._waiting(
                    statusline.waiting_for_ami(
                        self.ami.address, max(self.ami.failures, 1), self.ami.next_try_in, self.ami.last_error
                    )
                )

    # -- STATUS= while running -------------------------------------------------------

    def _status_facts(self) -> statusline.Facts:
        backlog = self.intake.backlog()
        return statusline.Facts(
            ami_address=f"{self.cfg.ami.host}:{self.cfg.ami.port}",
            ami_up=self.ami.connected,
            ami_down_since=self.ami.down_since,
            database_up=backlog.link.up,
            database_down_since=backlog.link.since if backlog.link.up is False else None,
            open_requests=self.open_requests,
            dialling=len(self.dialer.runs),
            queued=backlog.queued,
            spooled=backlog.spooled,
            draining=self.state == "draining",
        )

    def _running_line(self) -> str:
        from callbackd.adapters.reports import ReportSettings

        return statusline.running(self._status_facts(), ReportSettings.from_config(self.cfg).tz)

    async def _status_line_loop(self) -> None:
        """STATUS= again whenever AMI, the database or the backlog changes (looked at every second)."""
        counted = float("-inf")
        while True:
            try:
                if time.monotonic() - counted >= COUNT_INTERVAL:
                    counted = time.monotonic()
                    with contextlib.suppress(Exception):  # the database down shows in the line itself
                        counts = await self.store.counts_by_status()
                        self.open_requests = counts.get(RequestStatus.OPEN.value, 0)
                line = self._running_line()
                if line != self.status_line:
                    self.status_line = line
                    notify(f"STATUS={line}")
            except Exception:
                log.exception("status_line.failed")
            await asyncio.sleep(STATUS_CHECK)

    def _draining(self) -> None:
        log.info(
            "daemon.stopping",
            in_flight=len(self.dialer.runs),
            grace_s=self.cfg.service.drain_grace.total_seconds(),
            hint="send SIGTERM again to cut the drain short",
        )
        self.state = "draining"
        notify("STOPPING=1")
        self.dialer.accepting = False

    async def _unless_forced(self, work: Any) -> Any:
        """Await *work* unless a second signal comes first (then it is cancelled)."""
        task = asyncio.ensure_future(work)
        forced = asyncio.ensure_future(self.lifecycle.force_exit.wait())
        await asyncio.wait([task, forced], return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return None
        return task.result()

    async def _close_intake(self) -> None:
        intake: IntakeService | None = getattr(self, "intake", None)
        if intake is not None and not intake.closed:
            await intake.close(self.cfg.service.flush_timeout.total_seconds(), self.lifecycle.force_exit)

    def _on_hup(self) -> None:
        if self.state != "running":
            log.info("config.reload_skipped", state=self.state)
            return
        self.reload()

    # -- reload ----------------------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: re-read the config file and apply what can change without dropping AMI or calls.

        A file that does not validate changes nothing: the daemon keeps running as it was.
        """
        if self.config_path is None:
            log.warning("config.reload_failed", errors=["started without a config file"])
            return False
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            try:
                new = config_mod.load(self.config_path)
            except ConfigError as exc:
                lines = str(exc).splitlines()
                log.error(
                    "config.reload_failed",
                    path=str(self.config_path),
                    errors=[line.strip() for line in lines[1:]] or lines,
                    hint="still running with the previous config",
                )
                return False
            plan = reload_mod.plan(self.cfg, new)
            self._apply(plan.effective)
            self.reloaded_at = utcnow()
            log.info("config.reloaded", path=str(self.config_path), changed=plan.changed)
            if plan.restart_needed:
                log.warning("config.restart_needed", keys=plan.restart_needed, hint="restart the daemon")
            return True
        finally:
            notify("READY=1")

    def _apply(self, cfg: Config) -> None:
        """Swap in the live parts of *cfg*; calls in flight keep the settings they started with."""
        if cfg.log != self.cfg.log:
            logs.setup(cfg.log.level, cfg.log.format)
        self.cfg = cfg
        self.rules = intake_rules(cfg)
        self.detector.rules = detection_rules(cfg)
        self.guard.reconfigure(abuse_limits(cfg))
        for adapter in (self._agi, self._mqtt):
            if adapter is not None:
                adapter.rules = self.rules
        with contextlib.suppress(AttributeError):  # not yet built: build() reads self.cfg
            self.intake.rules = self.rules
            self.intake.mask_numbers = cfg.log.mask_numbers
        with contextlib.suppress(AttributeError):
            self.store.schedule = cfg.schedule_rules()
        with contextlib.suppress(AttributeError):
            self.dialer.cfg = cfg.dialer
            self.dialer.mask_numbers = cfg.log.mask_numbers
            self.dialer.wake.set()

    # -- AMI -------------------------------------------------------------------------

    async def on_login(self) -> None:
        """After every (re)connect: refuse an unsupported Asterisk, then resync (callbackd/resync.py)."""
        self.dialer.reconciled = False
        try:
            await self._check_asterisk()
        except AmiError as exc:
            # Start-up refuses this at once; after a reconnect dialling stays paused.
            log.error("ami.unsupported", error=str(exc))
            return
        await on_login(self.ami, self.pool, self.detector, self.dialer)

    async def _check_asterisk(self) -> None:
        """Refuse an Asterisk whose AMI events lack Linkedid (see domain/pbx.py)."""
        settings = await self.ami.action({"Action": "CoreSettings"})
        try:
            version = check_asterisk(settings)
        except UnsupportedAsterisk as exc:
            raise AmiError(str(exc)) from None
        if version != self.asterisk_version:
            self.asterisk_version = version
            log.info("ami.asterisk", version=version, ami_version=settings.get("AMIversion"))

    def on_event(self, ev: dict[str, str]) -> None:
        """One AMI event, to what :data:`AMI_ROUTES` says it feeds."""
        now = utcnow()
        self.metrics.event_received(ev, now.timestamp())
        route = AMI_ROUTES.get(ev.get("Event", ""), 0)
        if not route:
            return
        if route & POOL:
            self.pool.update(ev)
        if route & DIALER:
            self.dialer.on_event(ev)
        if route & WAKE:
            self.dialer.wake.set()
        if route & DETECTOR:
            for out in self.detector.feed(ev, now):
                self.intake.put(out)

    # -- lead intake -----------------------------------------------------------------

    async def _start_lead_intake(self, stack: AsyncExitStack) -> None:
        """Web forms over HTTP and MQTT; closed with AMI, before the intake is flushed."""
        if self.cfg.http.enabled:
            from callbackd.adapters import api
            from callbackd.adapters.http import HttpServer, build_app
            from callbackd.adapters.metrics import Metrics, router
            from callbackd.adapters.reports import ReportSettings
            from callbackd.adapters.tokens import Tokens

            tokens = Tokens.from_config(self.cfg)
            metrics = self.metrics
            routers = [router(metrics, self.store)] if isinstance(metrics, Metrics) else []
            routers.append(
                api.router(
                    self.store,
                    tokens,
                    db_url=self.cfg.database.url,
                    settings=lambda: ReportSettings.from_config(self.cfg),
                    wake=self.dialer.wake.set,
                )
            )
            # A function, not the rules: a reload replaces self.rules.
            app = build_app(
                self.submit, self.cfg.http_token(), lambda: self.rules, extra_routers=routers, tokens=tokens
            )
            if self.cfg.console.enabled:
                from callbackd.adapters import console

                pages = console.router(
                    self.store,
                    console.auth_from_config(self.cfg),
                    db_url=self.cfg.database.url,
                    settings=lambda: ReportSettings.from_config(self.cfg),
                    live=lambda: console.live_view(self),
                    default_language=self.cfg.console.language,
                    wake=self.dialer.wake.set,
                    intake=console.submitter(self.submit),
                )
                console.install(app, pages)
            server = HttpServer(app, self.cfg.http.host, self.cfg.http.port)
            await server.start()
            stack.push_async_callback(server.stop)
        if self.cfg.mqtt.enabled:
            from callbackd.adapters.mqtt import MqttIntake

            mqtt = self._mqtt = MqttIntake(
                self.cfg.mqtt, self.submit, self.rules, client_id=self.cfg.mqtt_client_id()
            )
            mqtt.start()
            stack.push_async_callback(mqtt.stop)

    async def _housekeeping(self) -> None:
        first = True
        while True:
            await asyncio.sleep(60)
            try:
                now = utcnow()
                expired = await self.store.expire_old(now)
                released = await self.store.release_stale_claims(now)
                stale = self.detector.expire(now)
                if expired or released or stale:
                    log.info("housekeeping", expired=expired, released=released, stale_calls=len(stale))
                await self._retention(now)
                if self._folded_at is None or now - self._folded_at >= timedelta(hours=1):
                    self._folded_at = now
                    from callbackd.adapters.reports.touches import fold_touches

                    await fold_touches(self.store.engine)
            except Exception:
                log.exception("housekeeping.failed")
            if first:
                first = False
                trim_heap()  # the first turn's imports and queries, as after start-up

    async def _retention(self, now: datetime) -> None:
        """Anonymise numbers past retention, at most hourly (the query scans every table)."""
        r = self.cfg.retention
        if r.calls is None and r.contacts is None:
            return
        if self._retention_at is not None and now - self._retention_at < timedelta(hours=1):
            return
        self._retention_at = now
        from callbackd.adapters.privacy import anonymise_expired

        done = await anonymise_expired(self.store.engine, now, calls=r.calls, contacts=r.contacts)
        if done:
            log.info("retention.anonymised", numbers=done)

    # -- status and metrics ----------------------------------------------------------

    def status_snapshot(self) -> dict[str, Any]:
        dialer: Dialer | None = getattr(self, "dialer", None)
        snapshot = status_file.snapshot(
            version=VERSION,
            node=self.cfg.node,
            state=self.state,
            started_at=self.started_at,
            reloaded_at=self.reloaded_at,
            ami_address=f"{self.cfg.ami.host}:{self.cfg.ami.port}",
            ami=getattr(self, "ami", None),
            pool=self.pool,
            runs=list(dialer.runs.values()) if dialer is not None else [],
            intake=getattr(self, "intake", None),
            last_error=logs.last_problem.last,
            show_number=self._num,
            now=utcnow(),
        )
        snapshot["unsaved_outcomes"] = dialer.unsaved_outcomes() if dialer is not None else []
        return snapshot

    def _write_status(self, snapshot: dict[str, Any]) -> None:
        path = self.cfg.service.status_file
        try:
            status_file.write(path, {**snapshot, "written_at": utcnow().isoformat()})
        except OSError as exc:
            if self._status_error != str(exc):  # once per distinct failure, not every second
                log.warning("status.write_failed", path=str(path), error=str(exc))
            self._status_error = str(exc)
        else:
            self._status_error = None

    async def _status_loop(self) -> None:
        """Rewrite the status file on any change (looked for every second) and every status_interval."""
        loop = asyncio.get_running_loop()
        last: dict[str, Any] | None = None
        written = float("-inf")
        while True:
            try:
                snapshot = self.status_snapshot()
                due = loop.time() - written >= self.cfg.service.status_interval.total_seconds()
                if snapshot != last or due:
                    self._write_status(snapshot)
                    last, written = snapshot, loop.time()
            except Exception:
                log.exception("status.failed")
            await asyncio.sleep(STATUS_CHECK)

    def _stopped(self) -> None:
        """Last words in the status file, so `callbackd status` says stopped rather than gone."""
        self.state = "stopped"
        self._write_status(self.status_snapshot())

    def _live(self) -> Live:
        from callbackd.adapters.metrics import Live

        ami: AmiClient | None = getattr(self, "ami", None)
        dialer: Dialer | None = getattr(self, "dialer", None)
        intake: IntakeService | None = getattr(self, "intake", None)
        backlog = intake.backlog() if intake is not None else None
        return Live(
            ami_connected=bool(ami is not None and ami.connected),
            ami_reconnects=ami.reconnects if ami is not None else 0,
            operators=len(self.pool.members),
            operators_free=len(self.pool.free(time.time())),
            callers_waiting=self.pool.callers_waiting(),
            in_flight=len(dialer.runs) if dialer is not None else 0,
            refusals=self.refusals,
            database_up=backlog.link.up if backlog is not None else None,
            backlog=backlog.items if backlog is not None else 0,
            spooled=backlog.spooled if backlog is not None else 0,
            backlog_oldest_s=(utcnow() - backlog.oldest).total_seconds()
            if backlog and backlog.oldest
            else 0.0,
            spool_full=bool(backlog and backlog.spool_full),
        )

    def _attempt_started(self, run: Run, req: Any) -> None:
        # The first attempt: nothing counted, no operator failover yet (a retry round resets
        # operator_tries, so Metrics also remembers which requests it has seen).
        first = req.attempts_made == 0 and req.operator_tries == 0 and req.last_attempt_at is None
        self.metrics.attempt_started(req.id, req.created_at, utcnow(), first)

    def _attempt_finished(self, run: Run, done: Finished) -> None:
        reached = done.request_status == RequestStatus.REACHED
        self.metrics.attempt_finished(done.outcome.value, reached=reached)


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 5)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t
