"""No lead lost over MQTT: a private Mosquitto (own port, config and persistence) that the
tests stop and restart, and the intake in its own process, stopped or killed with -9."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import aiomqtt
import pytest
from leadkit import counts
from sqlalchemy import select

from callbackd.adapters import db
from callbackd.adapters import models as m
from callbackd.adapters.store import Store
from callbackd.app import CLAIM_LEASE
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.ladder import Schedule

HERE = Path(__file__).parent
WAIT = 20  # seconds; every wait below is bounded by this


async def until(predicate) -> None:
    """Poll a condition nothing signals (another process's state), within the usual bound."""
    async with asyncio.timeout(WAIT):
        for _ in itertools.count():
            result = predicate()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A real Mosquitto of the test's own that keeps sessions and queued messages across restarts."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        directory.mkdir()
        self.log = directory / "mosquitto.log"
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "user root\n"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            "max_queued_messages 10000\n"
            f"log_dest file {self.log}\n"
            "log_type all\n"
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec("mosquitto", "-c", str(self.conf))
        await until(self._listening)

    async def _listening(self) -> bool:
        assert self.proc is not None and self.proc.returncode is None, self.log.read_text()
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        return True

    async def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file and exits."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            async with asyncio.timeout(WAIT):
                await self.proc.wait()
        self.proc = None

    def sent_to(self, client_id: str) -> int:
        """PUBLISH packets the broker has sent to ``client_id`` (its log says so)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count(f"Sending PUBLISH to {client_id} ")


@pytest.fixture
async def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    await b.start()
    yield b
    await b.stop()


class Daemon:
    """The intake process; the same client id each time, as a restarted daemon has."""

    def __init__(self, url: str, broker: Broker, topic: str) -> None:
        self.args = [url, str(broker.port), topic, f"callbackd-test-{uuid.uuid4().hex[:12]}"]
        self.client_id = self.args[-1]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *, wait_ready: bool = True) -> None:
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "mqtt_daemon.py"), *self.args, stdout=subprocess.PIPE, env=env
        )
        if wait_ready:
            assert self.proc.stdout is not None
            async with asyncio.timeout(WAIT):
                assert (await self.proc.stdout.readline()).strip() == b"ready"

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        async with asyncio.timeout(WAIT):
            await self.proc.wait()
        self.proc = None


@pytest.fixture
async def store(sqlite_url):
    engine = db.make_engine(sqlite_url)
    await db.upgrade(engine)
    schedule = Schedule(calendar=BusinessCalendar.always_open("UTC"))
    yield Store(engine, node="test-node", schedule=schedule, claim_lease=CLAIM_LEASE)
    await engine.dispose()


@pytest.fixture
async def daemon(sqlite_url, store, broker):
    d = Daemon(sqlite_url, broker, f"callbackd-test/{uuid.uuid4().hex}/leads")
    yield d
    if d.proc is not None:
        await d.stop(signal.SIGKILL)


def lead(i: int) -> bytes:
    """Every third lead has no id: its content names it."""
    body = {"phone": f"+1202555{i:04d}", "comment": f"lead {i}"}
    if i % 3:
        body["id"] = f"lead-{i}"
    return json.dumps(body).encode()


async def publish(port: int, topic: str, payloads: list[bytes]) -> None:
    """A web backend that sends each lead until the broker acknowledges it (QoS 1)."""
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


async def refs(store: Store) -> Counter[str]:
    async with store.session() as s:
        return Counter((await s.execute(select(m.Contact.source_ref))).scalars())


async def until_stored(store: Store, n: int) -> None:
    async def enough() -> bool:
        return (await counts(store))[0] >= n

    await until(enough)


def expected_refs(indices) -> set[str]:
    import hashlib

    return {f"lead-{i}" if i % 3 else "sha256:" + hashlib.sha256(lead(i)).hexdigest() for i in indices}


async def test_leads_published_while_the_daemon_is_stopped_arrive_after_its_restart(daemon, broker, store):
    """Regression: no persistent session, so the broker kept nothing for a daemon that was away."""
    topic = daemon.args[2]
    await daemon.start()
    await publish(broker.port, topic, [lead(0)])
    await until_stored(store, 1)
    await daemon.stop()
    await publish(broker.port, topic, [lead(i) for i in range(1, 7)])
    assert await counts(store) == (1, 1)  # nobody to take them: the broker holds them
    await daemon.start()
    await until_stored(store, 7)
    await asyncio.sleep(0.5)  # a late duplicate would land now
    stored = await refs(store)
    assert set(stored) == expected_refs(range(7)) and set(stored.values()) == {1}
    assert await counts(store) == (7, 7)


async def test_a_lead_received_but_not_yet_stored_survives_kill_9(daemon, broker, store, sqlite_url):
    """Regression: the PUBACK went out on receipt, so a lead in hand when the daemon died was lost."""
    topic = daemon.args[2]
    await daemon.start()
    path = sqlite_url.split(":///", 1)[1]
    lock = sqlite3.connect(path, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # the store cannot write: the lead stays in the daemon's hands
        before = broker.sent_to(daemon.client_id)
        await publish(broker.port, topic, [lead(1)])
        await until(lambda: broker.sent_to(daemon.client_id) > before)
        await daemon.stop(signal.SIGKILL)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert await counts(store) == (0, 0)
    await daemon.start()
    await until_stored(store, 1)
    await asyncio.sleep(0.5)
    assert await refs(store) == Counter(expected_refs([1]))


async def test_broker_and_daemon_restarts_while_leads_are_published_lose_none(daemon, broker, store):
    """Mosquitto stopped and started under a publisher, the daemon stopped and started: every
    lead the broker acknowledged is stored exactly once, redeliveries and resends included."""
    topic = daemon.args[2]
    await daemon.start()
    total = 45
    acked: list[int] = []

    async def publisher() -> None:
        i = 0
        while i < total:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=2
                ) as client:
                    while i < total:
                        await client.publish(topic, lead(i), qos=1)
                        acked.append(i)
                        i += 1
                        await asyncio.sleep(0.05)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)  # the broker is away: send the same lead again

    async def reach(n: int) -> None:
        await until(lambda: len(acked) >= n)

    task = asyncio.create_task(publisher())
    try:
        await reach(10)
        await broker.stop()  # the daemon and the publisher both lose the broker
        await asyncio.sleep(1.0)
        await broker.start()
        await reach(20)
        await daemon.stop()
        await reach(27)
        await broker.stop()  # leads queued for the absent daemon must survive this
        await asyncio.sleep(0.5)
        await broker.start()
        await reach(35)
        await daemon.start(wait_ready=False)
        async with asyncio.timeout(WAIT):
            await task
    finally:
        task.cancel()
    assert sorted(set(acked)) == list(range(total))
    await until_stored(store, total)
    await asyncio.sleep(1.0)  # a late duplicate would land now
    stored = await refs(store)
    assert set(stored) == expected_refs(range(total)), "a lead is missing"
    assert set(stored.values()) == {1}, [r for r, n in stored.items() if n > 1]
    assert await counts(store) == (total, total)


async def test_a_lead_that_cannot_be_stored_is_not_acknowledged_and_comes_back(pg_url, broker):
    """Regression: a database error answered "send it again later" and acknowledged the lead,
    so the broker dropped it. Now it stays unacknowledged and the broker sends it again."""
    import asyncpg

    base, name = pg_url.replace("+asyncpg", "").rsplit("/", 1)
    engine = db.make_engine(pg_url)
    schedule = Schedule(calendar=BusinessCalendar.always_open("UTC"))
    pg_store = Store(engine, node="test-node", schedule=schedule, claim_lease=CLAIM_LEASE)
    daemon = Daemon(pg_url, broker, f"callbackd-test/{uuid.uuid4().hex}/leads")
    await daemon.start()
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        before = broker.sent_to(daemon.client_id)
        await publish(broker.port, daemon.args[2], [lead(4), lead(5)])
        # Refused by the database, so sent again after each reconnect: never acknowledged.
        await until(lambda: broker.sent_to(daemon.client_id) >= before + 3)
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await until_stored(pg_store, 2)
        await asyncio.sleep(0.5)
        assert await refs(pg_store) == Counter(expected_refs([4, 5]))
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await daemon.stop(signal.SIGKILL)
        await engine.dispose()
