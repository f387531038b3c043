"""Composition root: builds every adapter, wires them, runs until told to stop.

Each adapter registers its own cleanup on one AsyncExitStack, so start-up can
fail at any step and still leave nothing behind. The first SIGTERM stops new
attempts and drains the ones in flight; a second one exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import Counter
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog

from callbackd import config as config_mod
from callbackd import logs
from callbackd import reload as reload_mod
from callbackd.adapters import db
from callbackd.adapters import status as status_file
from callbackd.adapters.ami import AmiClient, AmiError
from callbackd.adapters.metrics import Live, Metrics
from callbackd.adapters.store import ContactResult, Finished, Store
from callbackd.config import Config, ConfigError
from callbackd.dialer import Dialer, Run, channel_ids
from callbackd.domain.detection import (
    Answered,
    CallEnded,
    DetectionRules,
    Detector,
    Missed,
    OutboundAnswered,
)
from callbackd.domain.errors import InvalidNumber
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
from callbackd.domain.limits import AbuseGuard, AbuseLimits
from callbackd.domain.operators import OperatorPool
from callbackd.domain.pbx import UnsupportedAsterisk, check_asterisk
from callbackd.domain.phone import NumberRules, mask, parse_caller_id
from callbackd.domain.states import RequestStatus

log = structlog.get_logger("callbackd")

# Resync after a login: a PBX that is still booting may not answer the first tries.
RESYNC_TRIES = 20
RESYNC_RETRY_S = 2.0
RESYNC_TIMEOUT_S = 5.0

CLAIM_LEASE = timedelta(hours=2)
# How often the status loop looks for a change worth rewriting the status file.
STATUS_CHECK = 1.0

try:
    VERSION = metadata.version("callbackd")
except metadata.PackageNotFoundError:  # run from a source tree without pip install
    VERSION = "unknown"


def utcnow() -> datetime:
    return datetime.now(UTC)


def notify(message: str) -> None:
    """sd_notify(3) without a dependency: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.sendall(message.encode())


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for us."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    pid = os.environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


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


class Daemon:
    def __init__(self, cfg: Config, config_path: Path | None = None) -> None:
        self.cfg = cfg
        # Re-read on SIGHUP; None (tests) leaves reload to a config passed in.
        self.config_path = config_path
        self.state = "starting"  # running, draining, stopped: shown by `callbackd status`
        self.started_at = utcnow()
        self.reloaded_at: datetime | None = None
        self.metrics = Metrics(self._live, version=VERSION)
        self._status_error: str | None = None
        self._agi: Any = None
        self._mqtt: Any = None
        self.detector = Detector(detection_rules(cfg))
        self._retention_at: datetime | None = None
        self.rules = intake_rules(cfg)
        self.guard = AbuseGuard(abuse_limits(cfg))
        # Contacts refused by the number rules or the abuse limits, by reason.
        self.refusals: Counter[str] = Counter()
        self.pool = OperatorPool(cfg.dialer.queues, int(cfg.dialer.wrapup.total_seconds()))
        self.asterisk_version: str | None = None
        self.intake: asyncio.Queue[Any] = asyncio.Queue()
        self.stop = asyncio.Event()
        self.sigterms = 0
        self.store: Store
        self.ami: AmiClient
        self.dialer: Dialer

    def _num(self, number: str) -> str:
        return mask(number) if self.cfg.log.mask_numbers else number

    async def run(self) -> int:
        # From the start: SIGHUP's default action would kill a daemon still connecting.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_hup)
        async with AsyncExitStack() as stack:
            engine = db.make_engine(self.cfg.database.url)
            stack.push_async_callback(engine.dispose)
            stack.callback(self._stopped)
            await db.upgrade(engine)
            log.info("db.migrated", revision=await db.current_revision(engine))
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
            a = self.cfg.ami
            self.ami = AmiClient(
                host=a.host,
                port=a.port,
                username=a.username,
                secret=self.cfg.ami_secret(),
                on_event=self.on_event,
                on_login=self.on_login,
                ping_interval=a.ping_interval.total_seconds(),
                ping_timeout=a.ping_timeout.total_seconds(),
            )
            stack.push_async_callback(self.ami.close)
            self.dialer = Dialer(
                self.cfg.dialer,
                self.store,
                self.ami,
                self.pool,
                mask_numbers=self.cfg.log.mask_numbers,
                guard=self.guard,
                on_started=self._attempt_started,
                on_finished=self._attempt_finished,
            )
            stack.push_async_callback(self.dialer.close)
            await self.ami.start(a.connect_timeout.total_seconds())
            await self._check_asterisk()
            if self.cfg.agi.enabled:
                from callbackd.adapters.agi import CallbackAgi

                agi = self._agi = CallbackAgi(self.submit, self.rules)
                server = await agi.serve(self.cfg.agi.host, self.cfg.agi.port)
                stack.push_async_callback(_close_server, server)
                log.info("agi.listening", host=self.cfg.agi.host, port=self.cfg.agi.port)
            tasks = [
                asyncio.create_task(self._intake_worker(), name="intake"),
                asyncio.create_task(self.dialer.run(), name="dialer"),
                asyncio.create_task(self._housekeeping(), name="housekeeping"),
                asyncio.create_task(self._watchdog(), name="watchdog"),
                asyncio.create_task(self._status_loop(), name="status"),
            ]
            stack.push_async_callback(_cancel, tasks)
            from callbackd.adapters.scheduled import ReportScheduler

            reports = ReportScheduler(self.cfg)
            reports.start()
            stack.callback(reports.shutdown)
            await self._start_lead_intake(stack)
            self._install_signals()
            self.state = "running"
            notify("READY=1\nSTATUS=attached to AMI")
            log.info(
                "daemon.ready", node=self.cfg.node, database=engine.url.render_as_string(hide_password=True)
            )
            await self.stop.wait()
            notify("STOPPING=1")
            drained = await self.dialer.drain(self.cfg.service.drain_grace)
            await self._flush_intake()
            log.info("daemon.stopped", drained=drained, in_flight=len(self.dialer.runs))
        return 0

    # -- signals ---------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self._on_term)

    def _on_term(self) -> None:
        self.sigterms += 1
        if self.sigterms == 1:
            log.info(
                "daemon.stopping",
                in_flight=len(self.dialer.runs),
                grace_s=self.cfg.service.drain_grace.total_seconds(),
                hint="send SIGTERM again to exit at once",
            )
            self.state = "draining"
            self.dialer.accepting = False
            self.stop.set()
        else:
            log.warning("daemon.forced_exit")
            os._exit(1)

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
        with contextlib.suppress(AttributeError):  # not yet built: run() reads self.cfg
            self.store.schedule = cfg.schedule_rules()
        with contextlib.suppress(AttributeError):
            self.dialer.cfg = cfg.dialer
            self.dialer.mask_numbers = cfg.log.mask_numbers
            self.dialer.wake.set()

    # -- AMI -------------------------------------------------------------------------

    async def on_login(self) -> None:
        """After every (re)connect: resync operators and queues, then reconcile calls.

        Nothing is dialled until this succeeds. A PBX that is still starting answers
        QueueStatus late or not at all, so the resync is retried while the link is up.
        """
        self.dialer.reconciled = False
        try:
            await self._check_asterisk()
        except AmiError as exc:
            # Start-up refuses this at once; after a reconnect dialling stays paused.
            log.error("ami.unsupported", error=str(exc))
            return
        for attempt in range(1, RESYNC_TRIES + 1):
            try:
                await self._resync()
                return
            except AmiError as exc:
                log.warning("ami.resync_failed", error=str(exc), attempt=attempt)
            if not self.ami.connected:
                return  # the next login resyncs
            await asyncio.sleep(RESYNC_RETRY_S)
        log.error("ami.resync_gave_up", tries=RESYNC_TRIES, hint="dialling stays paused until the next login")

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

    async def _resync(self) -> None:
        status = await self.ami.list_action({"Action": "QueueStatus"}, timeout=RESYNC_TIMEOUT_S)
        asked_at = utcnow()
        channels = await self.ami.list_action({"Action": "CoreShowChannels"}, timeout=RESYNC_TIMEOUT_S)
        self.pool.resync(status)
        live = [e for e in channels if e.get("Event") == "CoreShowChannel"]
        lost = self.detector.resync(live, status, utcnow())
        if lost:
            log.warning("calls.ended_unseen", count=len(lost), linkedids=[c.linkedid for c in lost][:20])
        await self.dialer.reconcile(channel_ids(channels), asked_at)
        log.info(
            "ami.resynced",
            calls_followed=len(self.detector.calls),
            members=len(self.pool.members),
            free=len(self.pool.free(utcnow().timestamp())),
            waiting=self.pool.callers_waiting(),
            in_flight=len(self.dialer.runs),
        )

    def on_event(self, ev: dict[str, str]) -> None:
        now = utcnow()
        self.metrics.event_received(ev, now.timestamp())
        self.pool.update(ev)
        self.dialer.on_event(ev)
        name = ev.get("Event")
        if name == "QueueMemberStatus":
            self.dialer.wake.set()
        for out in self.detector.feed(ev, now):
            self.intake.put_nowait(out)

    # -- intake ----------------------------------------------------------------------

    async def _intake_worker(self) -> None:
        """One writer, in arrival order: merges and recoveries never race each other."""
        while True:
            item = await self.intake.get()
            try:
                await self._handle(item)
            except Exception:
                log.exception("intake.failed", item=type(item).__name__)
            finally:
                self.intake.task_done()

    async def _start_lead_intake(self, stack: AsyncExitStack) -> None:
        """Web forms over HTTP and MQTT; pushed last, so they stop taking input first on exit."""
        if self.cfg.http.enabled:
            from callbackd.adapters import api
            from callbackd.adapters.http import HttpServer, build_app
            from callbackd.adapters.metrics import router
            from callbackd.adapters.reports import ReportSettings
            from callbackd.adapters.tokens import Tokens

            tokens = Tokens.from_config(self.cfg)
            routers = [router(self.metrics, self.store)] if self.cfg.http.metrics else []
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

    async def _flush_intake(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.intake.join(), 5)

    async def _handle(self, item: Any) -> None:
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
            await self.submit(contact)
        elif isinstance(item, Answered):
            await self._self_recovery(item.caller_num, item.at, "client_called_in")
        elif isinstance(item, OutboundAnswered):
            await self._self_recovery(item.number, item.at, "operator_called")
        elif isinstance(item, CallEnded):
            try:
                number = parse_caller_id(item.call.caller_num, self.rules.region)
            except InvalidNumber:
                number = None
            await self.store.record_call(item.call, str(number) if number else None)
            self.metrics.call_recorded(item.call.missed.value if item.call.missed else None)

    async def submit(self, contact: Contact) -> ContactResult:
        """Every source ends here: decide, apply the abuse limits, store once, wake the dialer."""
        now = utcnow()
        decision = decide(contact, self.rules)
        if decision.schedules and contact.source is not Source.ADMIN:
            number = str(decision.number)
            refusal = self.guard.new_request_refusal(number, now)
            # Only a new request counts: the store is asked only once a limit is reached.
            if refusal is not None and not await self.store.has_open_request(number):
                decision = limit(decision, refusal)
        if decision.disposition is Disposition.RATE_LIMITED and contact.source in WEB_SOURCES:
            self._refused(contact, decision)
            return ContactResult(None, None, disposition=decision.disposition)
        result = await self.store.record_contact(contact, decision)
        if result.created:
            self.guard.new_request_opened(str(decision.number), now)
        if result.duplicate:
            log.info("contact.duplicate", source=contact.source.value, ref=contact.source_ref)
        elif decision.disposition is Disposition.SCHEDULE:
            log.info(
                "request.stored",
                request_id=result.request_id,
                number=self._num(str(decision.number)),
                merged=result.merged,
                source=contact.source.value,
                reason=contact.reason,
            )
            self.dialer.wake.set()
        elif decision.disposition in (Disposition.BLOCKED, Disposition.RATE_LIMITED):
            self._refused(contact, decision)
        else:
            log.info(
                "contact.not_scheduled",
                disposition=decision.disposition.value,
                detail=decision.detail,
                source=contact.source.value,
            )
        return result

    def _refused(self, contact: Contact, decision: Decision) -> None:
        self.refusals[decision.detail] += 1
        log.info(
            "contact.refused",
            reason=decision.detail,
            disposition=decision.disposition.value,
            number=self._num(str(decision.number)),
            source=contact.source.value,
            count=self.refusals[decision.detail],
        )

    async def _self_recovery(self, raw: str, at: datetime, how: str) -> None:
        try:
            number = parse_caller_id(raw, self.rules.region)
        except InvalidNumber:
            return
        if number is None:
            return
        closed = await self.store.recover(str(number), at, how)
        self.metrics.recovered_by(how, len(closed))
        if closed:
            log.info("request.recovered", request_ids=closed, number=self._num(str(number)), how=how)

    async def _housekeeping(self) -> None:
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
            except Exception:
                log.exception("housekeeping.failed")

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

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog at half its interval, from the event loop itself."""
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- status and metrics ----------------------------------------------------------

    def status_snapshot(self) -> dict[str, Any]:
        """What `callbackd status` shows that only the running daemon knows."""
        now = utcnow()
        ami: AmiClient | None = getattr(self, "ami", None)
        dialer: Dialer | None = getattr(self, "dialer", None)
        runs = list(dialer.runs.values()) if dialer is not None else []
        return {
            "version": VERSION,
            "pid": os.getpid(),
            "node": self.cfg.node,
            "state": self.state,
            "started_at": self.started_at.isoformat(),
            "reloaded_at": self.reloaded_at.isoformat() if self.reloaded_at else None,
            "ami": {
                "address": f"{self.cfg.ami.host}:{self.cfg.ami.port}",
                "connected": bool(ami is not None and ami.connected),
                "reconnects": ami.reconnects if ami is not None else 0,
                "last_error": ami.last_error if ami is not None else None,
            },
            "operators": {
                "members": len(self.pool.members),
                "free": [{"interface": m.interface, "name": m.name} for m in self.pool.free(now.timestamp())],
            },
            "callers_waiting": self.pool.callers_waiting(),
            "in_flight": [
                {
                    "request_id": r.request_id,
                    "attempt_id": r.attempt_id,
                    "try_no": r.try_no,
                    "operator": r.operator,
                    "number": self._num(r.number),
                }
                for r in runs
            ],
            "unsaved_outcomes": dialer.unsaved_outcomes() if dialer is not None else [],
            "refusals": dict(self.refusals),
            "last_error": logs.last_problem.last,
        }

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
        ami: AmiClient | None = getattr(self, "ami", None)
        dialer: Dialer | None = getattr(self, "dialer", None)
        return Live(
            ami_connected=bool(ami is not None and ami.connected),
            ami_reconnects=ami.reconnects if ami is not None else 0,
            operators=len(self.pool.members),
            operators_free=len(self.pool.free(time.time())),
            callers_waiting=self.pool.callers_waiting(),
            in_flight=len(dialer.runs) if dialer is not None else 0,
            refusals=dict(self.refusals),
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
