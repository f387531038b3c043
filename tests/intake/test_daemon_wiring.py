"""The daemon starts both lead intakes from its config, feeds them to Daemon.submit, and stops them
when its exit stack unwinds. Everything is real except that AMI is never connected."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from contextlib import AsyncExitStack

import aiomqtt
import httpx
import pytest
from daemonkit import built_daemon, daemon_config
from leadkit import TOKEN

from callbackd.config import HTTP_TOKEN_ENV


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


@pytest.fixture
async def daemon(tmp_path, monkeypatch):
    monkeypatch.setenv(HTTP_TOKEN_ENV, TOKEN)
    base = f"callbackd-test/{uuid.uuid4().hex}"
    cfg = daemon_config(
        tmp_path,
        http={"enabled": True, "port": free_port()},
        mqtt={"enabled": True, "topic": f"{base}/leads", "reply_topic": f"{base}/reply"},
    )
    async with built_daemon(cfg) as d:
        yield d


async def test_http_and_mqtt_reach_daemon_submit_and_stop_with_the_stack(daemon):
    cfg = daemon.cfg
    async with AsyncExitStack() as stack:
        await daemon._start_lead_intake(stack)
        async with httpx.AsyncClient(
            base_url=f"http://{cfg.http.host}:{cfg.http.port}", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as client:
            r = await client.post("/v1/callbacks", json={"phone": "2025550123"})
        assert r.status_code == 202 and r.json()["status"] == "created"
        assert daemon.dialer.wake.is_set()

        async with aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5) as peer:
            await peer.subscribe(cfg.mqtt.reply_topic, qos=1)
            async with asyncio.timeout(10):
                # The intake may still be connecting: publish until it answers.
                while True:
                    await peer.publish(cfg.mqtt.topic, json.dumps({"phone": "2025550123", "id": "w1"}), qos=1)
                    try:
                        async with asyncio.timeout(0.5):
                            reply = json.loads((await anext(aiter(peer.messages))).payload)
                        break
                    except TimeoutError:
                        continue
        assert reply["ok"] and reply["request_id"] == r.json()["request_id"]
        assert reply["status"] in ("merged", "duplicate")
    with pytest.raises(OSError), socket.create_connection((cfg.http.host, cfg.http.port), timeout=1):
        pass
    assert [t for t in asyncio.all_tasks() if t.get_name() in ("mqtt", "http")] == []
