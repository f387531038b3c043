"""MQTT intake for web lead forms: subscribe, store each lead, reply with the outcome.

aiomqtt 2 does not reconnect, so :meth:`MqttIntake.run` builds a new client for
every attempt and backs off between them. Nothing a publisher sends can end the
loop: every payload gets a reply and a log line, never an exception.

No lead is lost: the broker keeps a persistent session under a fixed client id
(clean start off, a session expiry), and a QoS 1 lead is acknowledged only once
stored or refused, so one received just before a crash or a cut is delivered
again. aiomqtt 2 always acknowledges on receipt; paho, underneath, can leave
the PUBACK to the application (``manual_ack``), which aiomqtt does not expose yet
(empicano/aiomqtt#345), so :func:`_manual_acks` reaches paho's client for it.
Redeliveries are stored once: by the lead's ``id``, or by a hash of the payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from callbackd.adapters.payloads import LeadForm, LeadRefused, Submit, parse_lead, submit_lead
from callbackd.domain.errors import IntakeUnavailable
from callbackd.domain.intake import IntakeRules, Source

if TYPE_CHECKING:
    from callbackd.config import MqttConfig

log = structlog.get_logger("callbackd.mqtt")

INTERNAL_ERROR = "could not store the request; send it again later"


class NotStored(Exception):
    """A lead that was neither stored nor refused: left unacknowledged for the broker to resend."""


def _manual_acks(client: aiomqtt.Client) -> Callable[[aiomqtt.Message], None]:
    """Turn paho's automatic PUBACK off; the function returned acknowledges one message.

    Must run before connecting: a persistent session's queued leads arrive right after CONNACK.
    """
    paho = client._client  # private: see the module docstring
    paho.manual_ack_set(True)
    return lambda message: paho.ack(message.mid, message.qos)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MqttIntake:
    def __init__(
        self,
        cfg: MqttConfig,
        submit: Submit,
        rules: IntakeRules,
        *,
        client_id: str = "",
        backoff_initial: float = 1.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.cfg = cfg
        self.submit = submit
        self.rules = rules
        # Without a fixed id the broker cannot keep a session for us, so none is asked for.
        self.client_id = client_id or cfg.client_id
        self.persistent = bool(self.client_id)
        if not self.persistent:
            self.client_id = f"callbackd-{uuid.uuid4().hex}"
        self.backoff_initial = backoff_initial
        self.clock = clock
        self.connected = asyncio.Event()  # set while subscribed; tests and health checks wait on it
        self._stopping = False
        self._busy = asyncio.Lock()  # held while one message is handled, so stop() lets it finish
        self._task: asyncio.Task[Any] | None = None

    # -- one payload -----------------------------------------------------------------

    async def handle_payload(self, payload: bytes) -> dict[str, Any]:
        """Parse, decide, store; the reply to publish. Never raises (except on cancellation)."""
        reply, _settled = await self._handle(payload)
        return reply

    async def _handle(self, payload: bytes) -> tuple[dict[str, Any], bool]:
        """The reply, and whether the lead is settled (stored or refused) and may be acknowledged."""
        form: LeadForm | None = None
        settled = True
        try:
            form = parse_lead(payload)
            accepted = await submit_lead(
                form,
                source=Source.MQTT,
                rules=self.rules,
                submit=self.submit,
                now=self.clock(),
                # A lead without an id is known by its content, so a redelivery is stored once.
                fallback_key="sha256:" + hashlib.sha256(payload).hexdigest(),
            )
            reply: dict[str, Any] = {"ok": True, "request_id": accepted.request_id, "status": accepted.status}
        except LeadRefused as exc:
            log.info("lead.refused", source="mqtt", kind=exc.kind, reason=exc.reason)
            reply = {"ok": False, "error": exc.reason, "code": exc.kind}
        except IntakeUnavailable as exc:
            log.error("lead.unavailable", source="mqtt", error=str(exc))
            reply = {
                "ok": False,
                "error": "could not be stored now; send it again later",
                "code": "unavailable",
            }
            settled = False  # neither stored nor spooled: the broker keeps it and sends it again
        except Exception:
            log.exception("lead.failed", source="mqtt")
            reply = {"ok": False, "error": INTERNAL_ERROR, "code": "internal"}
            settled = False
        if form is not None and form.id is not None:
            reply["id"] = form.id  # lets senders sharing one reply topic match replies
        return reply, settled

    # -- connection loop -------------------------------------------------------------

    def _client(self) -> tuple[aiomqtt.Client, Callable[[aiomqtt.Message], None]]:
        c = self.cfg
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = int(c.session_expiry.total_seconds()) if self.persistent else 0
        client = aiomqtt.Client(
            c.host,
            c.port,
            username=c.username,
            password=c.password.get_secret_value() if c.password is not None else None,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            # Resume the session the broker kept (aiomqtt's default starts clean on first connect).
            clean_start=not self.persistent,
            properties=session,
            timeout=10,
            keepalive=30,
        )
        return client, _manual_acks(client)

    def start(self) -> asyncio.Task[None]:
        """Run in the background; the task is kept here so :meth:`stop` can end it."""
        self._task = asyncio.create_task(self.run(), name="mqtt")
        return self._task

    async def run(self) -> None:
        """Connect, subscribe and handle messages until :meth:`stop`; reconnect on any failure."""
        self._task = asyncio.current_task()
        delay = self.backoff_initial
        unsettled = False  # the last connection ended on a lead that could not be stored
        while not self._stopping:
            try:
                client, ack = self._client()
                async with client:
                    await self._subscribe(client)
                    if not unsettled:
                        delay = self.backoff_initial
                    self.connected.set()
                    log.info(
                        "mqtt.subscribed",
                        host=self.cfg.host,
                        port=self.cfg.port,
                        topic=self.cfg.topic,
                        client_id=self.client_id,
                    )
                    async for message in client.messages:
                        async with self._busy:
                            await self._on_message(client, message, ack)
                        if unsettled:
                            unsettled, delay = False, self.backoff_initial
                error = "connection closed"
            except aiomqtt.MqttError as exc:
                error = str(exc) or type(exc).__name__
            except NotStored as exc:
                # Reconnecting is what makes the broker send an unacknowledged lead again;
                # the backoff keeps growing while the same lead keeps failing.
                error, unsettled = str(exc), True
            except Exception as exc:  # a bug must not end the intake for good
                log.exception("mqtt.loop_failed")
                error = repr(exc)
            was_connected = self.connected.is_set()
            self.connected.clear()
            if self._stopping:
                break
            wait = delay * random.uniform(0.5, 1.0)
            log.warning(
                "mqtt.disconnected" if was_connected else "mqtt.connect_failed",
                host=self.cfg.host,
                port=self.cfg.port,
                error=error,
                retry_in=round(wait, 2),
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, max(self.cfg.reconnect_max.total_seconds(), self.backoff_initial))

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        # Retained leads would come back at every reconnect, and without noLocal a reply
        # sent to a topic we listen on would come back to us as a lead.
        options = SubscribeOptions(
            qos=self.cfg.qos, noLocal=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
        )
        granted = await client.subscribe(self.cfg.topic, options=options)
        for code in granted:
            value = code if isinstance(code, int) else code.value
            if value >= 0x80:
                raise aiomqtt.MqttError(f"subscription to {self.cfg.topic!r} refused: {code}")

    async def _on_message(
        self, client: aiomqtt.Client, message: aiomqtt.Message, ack: Callable[[aiomqtt.Message], None]
    ) -> None:
        raw = message.payload
        if isinstance(raw, bytes | bytearray):
            payload = bytes(raw)
        elif isinstance(raw, str):
            payload = raw.encode()
        else:
            payload = b"" if raw is None else str(raw).encode()
        reply, settled = await self._handle(payload)
        if not settled:
            raise NotStored("a lead could not be stored; it stays with the broker")
        ack(message)
        props = message.properties
        topic = self._reply_topic(getattr(props, "ResponseTopic", None))
        if not topic:
            return
        out = None
        correlation = getattr(props, "CorrelationData", None)
        if correlation is not None:
            out = Properties(PacketTypes.PUBLISH)
            out.CorrelationData = correlation
        try:
            await client.publish(topic, json.dumps(reply), qos=self.cfg.qos, properties=out)
        except ValueError as exc:  # a response topic with wildcards, or other unusable topic
            log.warning("mqtt.reply_failed", topic=topic[:200], error=str(exc))

    def _reply_topic(self, asked: str | None) -> str | None:
        if not asked:
            return self.cfg.reply_topic or None
        if self.cfg.allows_response_topic(asked):
            return asked
        log.warning("mqtt.response_topic_refused", topic=asked[:200])
        return None

    async def stop(self, grace: float = 5.0) -> None:
        """Let the message in hand finish (up to ``grace`` seconds), then leave the loop."""
        self._stopping = True
        task = self._task
        if task is None or task.done():
            return
        acquired = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._busy.acquire()
                acquired = True
        try:
            task.cancel()
            await asyncio.wait({task}, timeout=grace)
        finally:
            if acquired:
                self._busy.release()
        log.info("mqtt.stopped")
