"""The lead-form API on a real SQLite store: in process for the cases, and once over a real socket."""

from __future__ import annotations

import json
import signal
import socket
from datetime import UTC, datetime

import httpx
import pytest
from leadkit import BLACKLISTED, INJECTIONS, NOW, RULES, TOKEN, counts

from callbackd.adapters.http import HttpServer, build_app
from callbackd.adapters.payloads import MAX_PAYLOAD

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATH = "/v1/callbacks"


@pytest.fixture
def app(submit):
    return build_app(submit, TOKEN, RULES, clock=lambda: NOW)


@pytest.fixture
async def client(app):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callbackd", headers=AUTH) as c:
        yield c


async def post(client: httpx.AsyncClient, body: object, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(PATH, content=content, headers={"Content-Type": "application/json"}, **kw)


async def test_created_merged_and_duplicate_share_one_request(client, lead_store):
    first = await post(
        client,
        {
            "phone": "(202) 555-0123",
            "name": "Ada <script>",
            "source": "site.contact",
            "id": "lead-1",
            "comment": "about the invoice\x00",
            "preferred_time": "2026-03-02T15:30:00+01:00",
        },
    )
    assert first.status_code == 202, first.text
    rid = first.json()["request_id"]
    assert first.json() == {"request_id": rid, "status": "created"}

    merged = await post(client, {"phone": "+1 202 555 0123"})
    assert merged.status_code == 202 and merged.json() == {"request_id": rid, "status": "merged"}

    again = await post(client, {"phone": "(202) 555-0123", "source": "site.contact", "id": "lead-1"})
    assert again.status_code == 202 and again.json() == {"request_id": rid, "status": "duplicate"}

    assert await counts(lead_store) == (2, 1)
    req, _attempts, contacts = await lead_store.get_request(rid)
    assert req.number == "+12025550123" and req.sources == ["http"] and req.contact_count == 2
    assert req.reason == "web_form" and req.name == "Ada script"
    assert req.note == "about the invoice"
    # The second lead names no time: the earliest need wins and the call is due at once.
    assert req.preferred_at == datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
    assert req.due_at == NOW
    assert sorted(c.source_ref for c in contacts)[-1] == "site.contact:lead-1"


async def test_the_same_id_from_another_form_is_another_contact(client, lead_store):
    a = await post(client, {"phone": "2025550123", "source": "shop", "id": "7"})
    b = await post(client, {"phone": "2025550123", "source": "blog", "id": "7"})
    assert (a.json()["status"], b.json()["status"]) == ("created", "merged")
    assert await counts(lead_store) == (2, 1)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-0123456789ab"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_without_the_token_nothing_is_stored(app, lead_store, headers):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callbackd", headers=headers) as c:
        r = await post(c, {"phone": "2025550123"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {"detail": "missing or wrong bearer token"}
    assert await counts(lead_store) == (0, 0)


@pytest.mark.parametrize("phone", ["12", "call me", "", "anonymous", "+44 20 7946", *INJECTIONS])
async def test_invalid_phone_is_422_with_the_reason(client, lead_store, phone):
    r = await post(client, {"phone": phone, "id": "x1"})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("phone: ")
    assert await counts(lead_store) == (0, 0)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "Invalid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "object"),
        ({"name": "Ada"}, "phone: Field required"),
        ({"phone": 2025550123}, "phone: Input should be a valid string"),
        ({"phone": "2025550123", "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"phone": "2025550123", "preferred_time": "2026-03-02T15:30:00"}, "preferred_time: "),
        ({"phone": "2025550123", "preferred_time": "0001-01-01T00:00:00+05:00"}, "out of range"),
        ({"phone": "2025550123", "source": "a b"}, "source: "),
        ({"phone": "2025550123", "id": "x" * 129}, "id: "),
        ({"phone": "2025550123", "comment": "x" * 2001}, "comment: "),
    ],
)
async def test_malformed_body_is_422_with_the_reason(client, lead_store, body, needle):
    r = await post(client, body)
    assert r.status_code == 422
    assert needle in r.json()["detail"]
    assert await counts(lead_store) == (0, 0)


@pytest.mark.parametrize(("phone", "why"), [(BLACKLISTED, "blacklisted"), ("+19005550123", "prefix_blocked")])
async def test_blocked_number_is_403_with_the_reason(client, lead_store, phone, why):
    r = await post(client, {"phone": phone})
    assert r.status_code == 403
    assert why in r.json()["detail"]
    assert await counts(lead_store) == (0, 0)


async def test_huge_body_is_413_whether_or_not_its_length_is_declared(client, lead_store):
    big = json.dumps({"phone": "2025550123", "comment": "x" * MAX_PAYLOAD}).encode()
    r = await post(client, big)
    assert r.status_code == 413

    async def chunks():
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = await client.post(PATH, content=chunks())
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert await counts(lead_store) == (0, 0)


async def test_openapi_describes_the_endpoint(client):
    r = await client.get("/openapi.json", headers={"Authorization": ""})
    assert r.status_code == 200
    op = r.json()["paths"][PATH]["post"]
    assert {"202", "401", "403", "413", "422"} <= set(op["responses"])
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["phone"] and schema["additionalProperties"] is False
    assert r.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_healthz_needs_no_token(client):
    r = await client.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_real_socket_and_clean_stop_leave_signal_handlers_alone(app, lead_store):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    server = HttpServer(app, "127.0.0.1", 0, grace=1)
    await server.start()
    port = server.port
    try:
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as c:
            assert (await c.get("/healthz")).status_code == 200
            created = await post(c, {"phone": "2025550123", "id": "sock-1"})
            assert created.status_code == 202 and created.json()["status"] == "created"
            assert (await post(c, {"phone": "2025550123", "id": "sock-1"})).json()["status"] == "duplicate"
            assert (await post(c, {"phone": INJECTIONS[0]})).status_code == 422
            assert (await post(c, b"{" + b" " * (MAX_PAYLOAD + 10) + b"}")).status_code == 413
            assert (
                await c.post(PATH, json={"phone": "2025550123"}, headers={"Authorization": ""})
            ).status_code == 401
    finally:
        await server.stop()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert await counts(lead_store) == (1, 1)


async def test_start_fails_with_oserror_when_the_port_is_taken(app):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        server = HttpServer(app, "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(OSError, match=r"^\[Errno \d+\] http: cannot listen on 127\.0\.0\.1:\d+"):
            await server.start()
