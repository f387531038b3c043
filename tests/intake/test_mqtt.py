"""The MQTT intake against the real Mosquitto on 127.0.0.1:1883 (tests/setup-services starts it)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import pytest
from leadkit import BLACKLISTED, INJECTIONS, RULES, counts
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from structlog.testing import capture_logs

from callbackd.adapters.mqtt import MqttIntake
from callbackd.config import MqttConfig

BROKER = ("127.0.0.1", 1883)
WAIT = 10  # seconds; every wait below is bounded by this


@pytest.fixture
def topics() -> tuple[str, str]:
    base = f"callbackd-test/{uuid.uuid4().hex}"
    return f"{base}/leads", f"{base}/reply"


@contextlib.asynccontextmanager
async def running(cfg: MqttConfig, submit: Any) -> AsyncIterator[MqttIntake]:
    intake = MqttIntake(cfg, submit, RULES, backoff_initial=0.05)
    task = intake.start()
    try:
        async with asyncio.timeout(WAIT):
            await intake.connected.wait()
        yield intake
    finally:
        await intake.stop()
        assert task.done()


@contextlib.asynccontextmanager
async def peer(reply_topic: str) -> AsyncIterator[aiomqtt.Client]:
    """A web backend: publishes leads, listens for replies."""
    async with aiomqtt.Client(*BROKER, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(reply_topic, qos=1)
        yield client


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT):
        return await anext(aiter(client.messages))


async def ask(client: aiomqtt.Client, topic: str, payload: bytes | dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    await client.publish(topic, body, qos=1)
    return json.loads((await next_message(client)).payload)


async def until(predicate: Callable[[], bool]) -> None:
    """Poll a condition nothing signals, within the usual bound."""
    async with asyncio.timeout(WAIT):
        for _ in itertools.count():
            if predicate():
                return
            await asyncio.sleep(0.01)


def config(topic: str, reply: str, port: int = BROKER[1]) -> MqttConfig:
    return MqttConfig(enabled=True, host="127.0.0.1", port=port, topic=topic, reply_topic=reply)


async def test_a_valid_lead_creates_exactly_one_request(topics, submit, lead_store):
    topic, reply_topic = topics
    async with running(config(topic, reply_topic), submit), peer(reply_topic) as client:
        reply = await ask(client, topic, {"phone": "(202) 555-0123", "name": "Ada", "id": "m-1"})
    assert reply == {"ok": True, "request_id": reply["request_id"], "status": "created", "id": "m-1"}
    assert await counts(lead_store) == (1, 1)
    req, _attempts, contacts = await lead_store.get_request(reply["request_id"])
    assert req.sources == ["mqtt"] and req.reason == "web_form" and contacts[0].source_ref == "m-1"


async def test_redelivery_is_deduplicated_and_another_lead_merges(topics, submit, lead_store):
    topic, reply_topic = topics
    async with running(config(topic, reply_topic), submit), peer(reply_topic) as client:
        first = await ask(client, topic, {"phone": "2025550123", "source": "shop", "id": "42"})
        again = await ask(client, topic, {"phone": "2025550123", "source": "shop", "id": "42"})
        other = await ask(client, topic, {"phone": "+12025550123"})
    assert (first["status"], again["status"], other["status"]) == ("created", "duplicate", "merged")
    assert first["request_id"] == again["request_id"] == other["request_id"]
    assert await counts(lead_store) == (2, 1)


BAD = [
    (b"not json", "Invalid JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"[1, 2]", "object"),
    (b"", "Invalid JSON"),
    (json.dumps({"name": "no phone"}).encode(), "phone: Field required"),
    (json.dumps({"phone": 2025550123}).encode(), "valid string"),
    *[(json.dumps({"phone": p}).encode(), "phone: not a valid phone number") for p in INJECTIONS],
    (json.dumps({"phone": BLACKLISTED}).encode(), "blacklisted"),
    (json.dumps({"phone": "2025550123", "comment": "x" * 100_000}).encode(), "payload over"),
]


async def test_bad_payloads_get_an_error_reply_store_nothing_and_the_consumer_goes_on(
    topics, submit, lead_store
):
    topic, reply_topic = topics
    async with running(config(topic, reply_topic), submit) as intake, peer(reply_topic) as client:
        with capture_logs() as logs:
            for payload, needle in BAD:
                reply = await ask(client, topic, payload)
                assert reply["ok"] is False and needle in reply["error"], (payload[:40], reply)
        assert [e["event"] for e in logs].count("lead.refused") == len(BAD)
        assert all(e.get("reason") for e in logs if e["event"] == "lead.refused")
        assert await counts(lead_store) == (0, 0)
        assert intake.connected.is_set()
        good = await ask(client, topic, {"phone": "2025550123"})
    assert good["ok"] is True and good["status"] == "created"
    assert await counts(lead_store) == (1, 1)


async def test_v5_response_topic_and_correlation_data_are_honoured(topics, submit):
    topic, reply_topic = topics
    own = f"{reply_topic}/own"
    async with running(config(topic, reply_topic), submit), peer(own) as client:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = own
        props.CorrelationData = b"corr-7"
        await client.publish(topic, json.dumps({"phone": "2025550123"}), qos=1, properties=props)
        message = await next_message(client)
    assert str(message.topic) == own
    assert message.properties.CorrelationData == b"corr-7"
    assert json.loads(message.payload)["status"] == "created"


async def test_a_response_topic_outside_the_prefix_is_refused(topics, submit, lead_store):
    """Regression: any publisher could make the daemon publish, with its rights, to any topic."""
    topic, reply_topic = topics
    outside = f"{reply_topic}-not-under-it"
    with capture_logs() as logs:
        async with running(config(topic, reply_topic), submit), peer(outside) as client:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = outside
            await client.publish(
                topic, json.dumps({"phone": "2025550123", "id": "r-1"}), qos=1, properties=props
            )
            await until(lambda: any(e["event"] == "mqtt.response_topic_refused" for e in logs))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(aiter(client.messages))
    [refused] = [e for e in logs if e["event"] == "mqtt.response_topic_refused"]
    assert refused["topic"] == outside
    assert await counts(lead_store) == (1, 1)  # the lead itself is stored; only the reply is refused


async def test_a_lead_without_id_sent_again_is_stored_once(topics, submit, lead_store):
    """Regression: a lead without id got a random ref, so a redelivery was a second contact."""
    topic, reply_topic = topics
    body = {"phone": "2025550123", "comment": "call me"}
    async with running(config(topic, reply_topic), submit), peer(reply_topic) as client:
        first = await ask(client, topic, body)
        again = await ask(client, topic, body)
    assert (first["status"], again["status"]) == ("created", "duplicate")
    assert await counts(lead_store) == (1, 1)


async def test_a_reply_topic_we_listen_on_does_not_loop(topics, submit, lead_store):
    topic, _ = topics
    # Replies land on the lead topic itself: without noLocal each would come back as a lead.
    async with running(config(topic, topic), submit), peer(topic) as client:
        await client.publish(topic, b"not json", qos=1)
        seen = {bytes((await next_message(client)).payload) for _ in range(2)}
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await anext(aiter(client.messages))
    seen.remove(b"not json")  # our own publish; the other is the one reply
    assert json.loads(seen.pop())["ok"] is False
    assert await counts(lead_store) == (0, 0)


class Proxy:
    """A TCP relay between the intake and Mosquitto that the test can cut and restore."""

    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        await self.server.wait_closed()
        self.server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*BROKER)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


async def test_reconnects_after_the_broker_connection_is_cut(topics, submit, lead_store):
    topic, reply_topic = topics
    proxy = Proxy()
    await proxy.open()
    with capture_logs() as logs:
        async with running(config(topic, reply_topic, port=proxy.port), submit) as intake:
            await proxy.cut()
            await until(lambda: not intake.connected.is_set())
            # Nothing listens now: attempts fail and back off until the relay is back.
            await until(lambda: sum(e["event"] == "mqtt.connect_failed" for e in logs) >= 2)
            await proxy.open()
            async with asyncio.timeout(WAIT):
                await intake.connected.wait()
            async with peer(reply_topic) as client:
                reply = await ask(client, topic, {"phone": "2025550123"})
            await proxy.cut()
    assert reply["ok"] is True and reply["status"] == "created"
    assert await counts(lead_store) == (1, 1)
    events = [e["event"] for e in logs]
    assert events.count("mqtt.subscribed") >= 2 and "mqtt.disconnected" in events
    failed = [e for e in logs if e["event"] in ("mqtt.disconnected", "mqtt.connect_failed")]
    assert all(e["error"] and e["retry_in"] >= 0 for e in failed)


async def test_stop_ends_the_loop_while_the_broker_is_unreachable(topics, submit):
    topic, reply_topic = topics
    with socket_nobody_listens() as port:
        intake = MqttIntake(config(topic, reply_topic, port=port), submit, RULES, backoff_initial=0.05)
        task = intake.start()
        await asyncio.sleep(0.2)
        assert not intake.connected.is_set()
        async with asyncio.timeout(WAIT):
            await intake.stop()
        assert task.done()


@contextlib.contextmanager
def socket_nobody_listens():
    """A port that refuses connections: bound, never listening."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


async def test_retained_leads_are_not_replayed_on_connect(topics, submit, lead_store):
    topic, reply_topic = topics
    async with aiomqtt.Client(*BROKER, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(topic, json.dumps({"phone": "+13125550188"}), qos=1, retain=True)
    try:
        async with running(config(topic, reply_topic), submit), peer(reply_topic) as client:
            reply = await ask(client, topic, {"phone": "2025550123"})
        assert reply["ok"] is True
        assert await counts(lead_store) == (1, 1)
    finally:
        async with aiomqtt.Client(*BROKER, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.publish(topic, b"", qos=1, retain=True)
