"""The daemon's MQTT intake in a process of its own, so tests can SIGTERM it or kill -9 it.

Usage: mqtt_daemon.py DATABASE_URL BROKER_PORT TOPIC CLIENT_ID
Prints "ready" once subscribed; a SIGTERM stops it the way the daemon's drain does.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from leadkit import RULES

from callbackd.adapters import db
from callbackd.adapters.mqtt import MqttIntake
from callbackd.adapters.store import Store
from callbackd.app import CLAIM_LEASE
from callbackd.config import MqttConfig
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.intake import decide
from callbackd.domain.ladder import Schedule


async def main(url: str, port: int, topic: str, client_id: str) -> None:
    engine = db.make_engine(url)
    await db.upgrade(engine)
    schedule = Schedule(calendar=BusinessCalendar.always_open("UTC"))
    store = Store(engine, node="mqtt-test", schedule=schedule, claim_lease=CLAIM_LEASE)

    async def submit(contact):
        return await store.record_contact(contact, decide(contact, RULES))

    cfg = MqttConfig(
        enabled=True,
        port=port,
        topic=topic,
        reply_topic=f"{topic}/reply",
        client_id=client_id,
        session_expiry=600,
        reconnect_max=1,
    )
    intake = MqttIntake(cfg, submit, RULES, backoff_initial=0.1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    intake.start()
    await intake.connected.wait()
    print("ready", flush=True)
    await stop.wait()
    await intake.stop()
    await engine.dispose()


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says "ready"
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
