"""The one module that touches panoramisk.

panoramisk 1.4 is the only asyncio AMI client and is barely maintained, so its
quirks are contained here:

- after a reconnect it re-sends actions that got no answer; ``originate`` is
  therefore listed in ``forgetable_actions``, or a reconnect would dial twice;
- its own ping never checks the reply, so it is disabled and :meth:`_watchdog`
  pings, and drops the connection when no reply comes in time;
- a message it cannot handle (a duplicated ``Event`` or ``ActionID`` header makes
  it raise) would end the connection, so :class:`SafeAmiProtocol` drops that
  message instead, and caps what it buffers while waiting for a message's end;
- events reach the rest of the daemon as plain ``dict[str, str]``: an ordinary event (no
  ActionID, no repeated header) is parsed straight into one by :func:`parse_event`, without
  panoramisk's case-insensitive Message; everything else (responses, action events, odd
  input) still goes through panoramisk and :func:`to_dict`, which give the same dict;
- an ordinary event the daemon does not read (its name outside the client's ``wanted``) is
  dropped once its first line is read (:func:`unwanted`), before any parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Container, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from panoramisk import Manager
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from callbackd.domain.backoff import Backoff

log = structlog.get_logger("callbackd.ami")

# Actions panoramisk must never re-send after a reconnect.
FORGETABLE = ("ping", "login", "originate", "queuestatus", "coreshowchannels", "status")
# No real message comes near this; past it the peer is broken, so reconnect and resync.
MAX_PENDING = 4 * 1024 * 1024
# AMI values never hold control characters; PostgreSQL refuses NUL, logs and reports want none.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AmiError(Exception):
    """An AMI action failed or got no answer."""


class AmiNotConnected(AmiError):
    pass


def to_dict(message: Any) -> dict[str, str]:
    """A panoramisk Message as a plain dict; repeated headers are joined by ';', controls dropped."""
    out: dict[str, str] = {}
    for key, value in message.items():
        if key == "content":
            continue
        if isinstance(value, list):
            value = ";".join(str(v) for v in value)
        out[_CONTROL.sub("", str(key))] = _CONTROL.sub("", value if isinstance(value, str) else str(value))
    return out


# Headers that make a message panoramisk's business (a reply to an action, quoted, or its own).
_SLOW_KEYS = frozenset({"actionid", "commandid", "result", "content"})
_EOL = "\r\n"
_EOM = "\r\n\r\n"
_EVENT = "Event: "


def unwanted(block: str, wanted: Container[str]) -> bool:
    """Whether *block* (one message's text) is a plain event named outside *wanted*, which the
    daemon drops unparsed. Never one that panoramisk may need (a reply to an action, an event of
    an action's list, a shutdown) nor one whose name is not as Asterisk writes names (letters
    and digits), whatever :func:`parse_event` would make of it."""
    if not block.startswith(_EVENT):
        return False
    end = block.find(_EOL)
    name = block[7:] if end < 0 else block[7:end]
    if name in wanted or not name.isalnum() or name.lower() == "shutdown":
        return False
    # _SLOW_KEYS as a lowered message holds them after a line end (the first line is the Event's).
    low = block.lower()
    return not (
        "\nactionid: " in low or "\ncommandid: " in low or "\nresult: " in low or "\ncontent: " in low
    )


def parse_event(block: str) -> dict[str, str] | None:
    """An AMI event (one message's text, without its blank line) as the dict
    ``to_dict(Message.from_line(block))`` gives, or None when the message is not a plain event
    (no ``Event`` header, a reply to an action, a repeated header, a shutdown): those take
    panoramisk's path."""
    out: dict[str, str] = {}
    n = 0
    for line in block.split(_EOL):
        key, sep, value = line.partition(": ")
        if sep:
            out[key] = value
            n += 1
    if n != len(out) or "Event" not in out:
        return None
    lowered = set(map(str.lower, out))
    if len(lowered) != n or not _SLOW_KEYS.isdisjoint(lowered) or out["Event"].lower() == "shutdown":
        return None
    # ASCII and printable once the line ends are gone: no control character (two C passes, cheaper
    # than the regex); anything else is searched for them.
    text = block.replace(_EOL, "")
    if not (text.isascii() and text.isprintable()) and _CONTROL.search(text):
        return {_CONTROL.sub("", k): _CONTROL.sub("", v) for k, v in out.items()}
    return out


class SafeAmiProtocol(AMIProtocol):
    """panoramisk's parser, minus the ways bad input ends the connection or eats memory."""

    def data_received(self, data: bytes) -> None:
        fast = getattr(self.factory, "on_plain_event", None)
        try:
            if fast is None or self.version is None:
                super().data_received(data)
            else:
                self._receive(data.decode("ascii", "ignore"), fast, getattr(self.factory, "wanted", None))
        except Exception as exc:  # the rest of this chunk is lost, the connection is not
            log.warning("ami.bad_data", error=repr(exc)[:200])
        if sum(len(part) for part in self.queue) > MAX_PENDING:
            log.warning("ami.bad_data", error=f"no message end in {MAX_PENDING} bytes; reconnecting")
            self.queue.clear()
            self.transport.close()

    def _receive(
        self, data: str, fast: Callable[[dict[str, str]], None], wanted: Container[str] | None = None
    ) -> None:
        """panoramisk's data_received (same framing), with plain events parsed by parse_event;
        with *wanted*, the plain events named outside it dropped unparsed (counted)."""
        if self.queue:
            data = self.queue.popleft() + data
        blocks = data.split(_EOM)
        self.queue.append(blocks.pop())
        for block in blocks:
            block = block.strip()
            if wanted is not None and unwanted(block, wanted):
                self.factory.dropped += 1
                continue
            event = parse_event(block)
            if event is not None:
                fast(event)
                continue
            message = Message.from_line(block)
            if message is not None:
                self.handle_message(message)

    def handle_message(self, message: Any) -> None:
        try:
            super().handle_message(message)
        except Exception as exc:
            log.warning("ami.bad_data", error=repr(exc)[:200])


class BackoffManager(Manager):
    """panoramisk's Manager, retrying a failed connect after the client's back-off, not a fixed delay."""

    client: AmiClient

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        if not f.cancelled() and isinstance(f.exception(), OSError):
            self.reconnect_timeout = self.client._connect_failed(f.exception())  # type: ignore[arg-type]
        super().connection_made(f)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.client.connected:  # lost before a login: one more failed try
            lost = exc or ConnectionError("hung up before login")
            self.reconnect_timeout = self.client._connect_failed(lost)
        super().connection_lost(exc)


class AmiClient:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        secret: str,
        on_event: Callable[[dict[str, str]], None],
        wanted: Container[str] | None = None,
        on_login: Callable[[], Awaitable[None]] | None = None,
        ping_interval: float = 10.0,
        ping_timeout: float = 5.0,
        reconnect_delay: float = 2.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._on_event = on_event
        self._on_login_cb = on_login
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connected = False
        self.logins = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self.disconnected_at: float | None = None
        self.down_since: datetime | None = None  # wall time of the last loss, for the status line
        self._logged_in = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        # Failed connects in a row: each waits longer (up to ami.reconnect_max) before the next.
        self.backoff = backoff or Backoff(initial=reconnect_delay, cap=max(reconnect_delay, 30.0))
        self.failures = 0
        self.next_try_in: float | None = None
        self.manager = BackoffManager(
            host=host,
            port=port,
            username=username,
            secret=secret,
            events="on",
            ping_delay=10**7,  # its ping ignores replies; see _watchdog
            ping_interval=10**7,
            reconnect_timeout=reconnect_delay,
            forgetable_actions=FORGETABLE,
            protocol_factory=SafeAmiProtocol,
            loop=asyncio.get_running_loop(),
            on_login=self._login_done,
            on_disconnect=self._disconnected,
        )
        self.manager.client = self
        self.manager.register_event("*", self._dispatch)
        # SafeAmiProtocol hands plain events here as dicts, past panoramisk's dispatch; with
        # *wanted* (the event names on_event reads), it drops the other plain events unparsed.
        self.manager.on_plain_event = self._deliver
        self.manager.wanted = wanted
        self.manager.dropped = 0

    @property
    def dropped(self) -> int:
        """Plain events dropped unparsed since start: named outside *wanted*."""
        return self.manager.dropped

    # -- lifecycle -------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.manager.config['host']}:{self.manager.config['port']}"

    def connect(self) -> None:
        """Start connecting; panoramisk keeps trying (after the back-off) until close()."""
        self.manager.connect()
        self._spawn(self._watchdog())

    async def wait_login(self, timeout: float | None = None) -> bool:
        """True once logged in; False when *timeout* seconds pass first."""
        try:
            await asyncio.wait_for(self._logged_in.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def start(self, timeout: float = 10.0) -> None:
        """Connect and wait for a successful login; AmiNotConnected after *timeout* seconds."""
        self.connect()
        if not await self.wait_login(timeout):
            raise AmiNotConnected(
                f"no AMI login to {self.address} within {timeout:.0f}s ({self.last_error or 'no answer'})"
            )

    def _connect_failed(self, exc: BaseException) -> float:
        """A connect or login failed: remember why, and return the seconds until the next try."""
        self.failures += 1
        errno = getattr(exc, "errno", None)
        self.last_error = f"cannot connect: {os.strerror(errno) if errno else exc or type(exc).__name__}"
        self.next_try_in = self.backoff.delay(self.failures, random.random())
        return self.next_try_in

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self.manager.close()
        # panoramisk schedules a reconnect on connection_lost; stop it reconnecting.
        self.manager.connect = lambda *a, **k: None  # type: ignore[method-assign]

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _login_done(self, manager: Manager) -> None:
        self.connected = True
        self.failures, self.next_try_in = 0, None
        # A connection lost later is retried after the first step of the back-off again.
        self.manager.reconnect_timeout = self.backoff.delay(1)
        self.logins += 1
        if self.logins > 1:
            self.reconnects += 1
        gap = time.monotonic() - self.disconnected_at if self.disconnected_at else 0.0
        log.info("ami.login", host=manager.config["host"], reconnects=self.reconnects, gap_s=round(gap, 3))
        self._logged_in.set()
        if self._on_login_cb is not None:
            self._spawn(self._on_login_cb())

    def _disconnected(self, manager: Manager, exc: object) -> None:
        if self.connected:
            self.disconnected_at = time.monotonic()
            self.down_since = datetime.now(UTC)
        self.connected = False
        self._logged_in.clear()
        self.last_error = f"disconnected: {exc}" if exc else "disconnected"
        if not self._closing:
            log.warning("ami.disconnected", reason=str(exc) if exc else None)

    def _dispatch(self, manager: Manager, message: Any) -> None:
        try:
            event = to_dict(message)
        except Exception as exc:  # garbage on the socket must never stop the stream
            log.warning("ami.bad_event", error=repr(exc)[:200])
            return
        self._deliver(event)

    def _deliver(self, event: dict[str, str]) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("ami.event_handler_failed", event=event.get("Event"))

    async def _watchdog(self) -> None:
        """Ping; when no reply comes in time, drop the socket so panoramisk reconnects."""
        while True:
            await asyncio.sleep(self.ping_interval)
            if not self.connected:
                continue
            try:
                reply = await self.action({"Action": "Ping"}, timeout=self.ping_timeout)
                if not reply.get("Response") == "Success":
                    raise AmiError(f"ping answered {reply.get('Response')!r}")
            except AmiError as exc:
                self.last_error = f"watchdog: {exc}"
                log.warning("ami.watchdog_reconnect", reason=str(exc))
                protocol = self.manager.protocol
                if protocol is not None:
                    protocol.connection_lost(exc)

    # -- actions ---------------------------------------------------------------------

    def _send(self, action: Mapping[str, Any], as_list: bool | None = None) -> asyncio.Future[Any]:
        if not self.connected or self.manager.protocol is None:
            raise AmiNotConnected("AMI is not connected")
        return self.manager.send_action(dict(action), as_list=as_list)

    async def action(self, action: Mapping[str, Any], timeout: float = 10.0) -> dict[str, str]:
        future = self._send(action)
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise AmiError(f"{action.get('Action')}: no reply in {timeout:.0f}s") from None
        if isinstance(reply, list):
            reply = reply[0]
        return to_dict(reply)

    async def list_action(self, action: Mapping[str, Any], timeout: float = 15.0) -> list[dict[str, str]]:
        """An action answered by an event list (QueueStatus, CoreShowChannels)."""
        future = self._send(action, as_list=True)
        try:
            replies = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise AmiError(f"{action.get('Action')}: no complete list in {timeout:.0f}s") from None
        if not isinstance(replies, list):
            replies = [replies]
        out = [to_dict(r) for r in replies]
        if out and out[0].get("Response") == "Error":
            raise AmiError(f"{action.get('Action')}: {out[0].get('Message', 'error')}")
        return out

    def originate(self, fields: Mapping[str, Any]) -> asyncio.Future[Any]:
        """Send an Async Originate. The future resolves with [ack, OriginateResponse].

        The caller must bound its wait: a connection lost in between leaves the
        future pending forever, by design (the action is never re-sent).
        """
        action = {"Action": "Originate", **fields, "Async": "true"}
        return self._send(action)
