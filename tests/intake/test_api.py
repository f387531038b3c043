"""API v1 on a real SQLite store: requests, report figures, scoped tokens, audit trail, offline docs."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi.routing import APIRoute
from leadkit import NOW, RULES, TOKEN
from starlette.routing import Mount

from callbackd.adapters import api, reports
from callbackd.adapters.http import build_app
from callbackd.adapters.reports import CsvOptions, ReportSettings
from callbackd.adapters.tokens import Token, Tokens
from callbackd.domain.metrics import Thresholds

READ = "reader-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef0"
INTAKE = "crm-intake-token-0123456789ab"
SETTINGS = ReportSettings(tz=ZoneInfo("Europe/Moscow"), thresholds=Thresholds(), csv=CsvOptions())
TOKENS = Tokens(
    [
        Token("http", TOKEN.encode(), frozenset({"intake"})),
        Token("reader", READ.encode(), frozenset({"read"})),
        Token("crm", ADMIN.encode(), frozenset({"admin"})),
        Token("forms", INTAKE.encode(), frozenset({"intake"})),
    ]
)
# Reachable without a token, on purpose: liveness, the scrape (loopback listener) and the docs.
PUBLIC = {"/healthz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
PUBLIC_MOUNTS = {"/docs-assets"}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def woken():
    return []


@pytest.fixture
def app(submit, lead_store, sqlite_url, woken):
    routes = api.router(
        lead_store,
        TOKENS,
        db_url=sqlite_url,
        settings=SETTINGS,
        wake=lambda: woken.append(1),
        clock=lambda: NOW,
    )
    return build_app(submit, TOKEN, RULES, clock=lambda: NOW, tokens=TOKENS, extra_routers=[routes])


@pytest.fixture
async def client(app):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callbackd") as c:
        yield c


async def lead(client, phone: str, token: str = TOKEN) -> int:
    r = await client.post("/v1/callbacks", content=json.dumps({"phone": phone}), headers=auth(token))
    assert r.status_code == 202, r.text
    return r.json()["request_id"]


async def test_list_show_and_page_through_requests(client):
    ids = [await lead(client, f"+1202555014{i}") for i in range(5)]
    r = await client.get("/v1/requests", params={"limit": 2}, headers=auth(READ))
    assert r.status_code == 200, r.text
    page = r.json()
    assert [x["id"] for x in page["items"]] == ids[::-1][:2] and page["next_before"] == ids[3]
    r = await client.get(
        "/v1/requests", params={"limit": 2, "before": page["next_before"]}, headers=auth(READ)
    )
    assert [x["id"] for x in r.json()["items"]] == [ids[2], ids[1]]
    r = await client.get("/v1/requests", params={"number": "+12025550142"}, headers=auth(READ))
    assert [x["id"] for x in r.json()["items"]] == [ids[2]] and r.json()["next_before"] is None
    r = await client.get("/v1/requests", params={"status": "cancelled"}, headers=auth(READ))
    assert r.json() == {"items": [], "next_before": None}

    r = await client.get(f"/v1/requests/{ids[0]}", headers=auth(READ))
    detail = r.json()
    assert detail["number"] == "+12025550140" and detail["status"] == "open" and detail["sources"] == ["http"]
    assert [c["source"] for c in detail["contacts_detail"]] == ["http"]
    assert detail["attempts_detail"] == [] and detail["audit"] == []
    assert (await client.get("/v1/requests/999999", headers=auth(READ))).status_code == 404


async def test_cancel_retry_and_schedule_go_through_the_state_table_and_the_audit_log(client, woken):
    rid = await lead(client, "+12025550150")
    r = await client.post(f"/v1/requests/{rid}/cancel", headers=auth(ADMIN))
    assert (
        r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["close_reason"] == "cancelled"
    )
    again = await client.post(f"/v1/requests/{rid}/cancel", headers=auth(ADMIN))
    assert again.status_code == 409 and "cancel" in again.json()["detail"]  # cancelled cannot be cancelled

    at = datetime(2026, 3, 3, 15, 30, tzinfo=ZoneInfo("Europe/Moscow"))
    r = await client.post(f"/v1/requests/{rid}/schedule", json={"at": at.isoformat()}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "open" and datetime.fromisoformat(body["due_at"]) == at
    assert datetime.fromisoformat(body["preferred_at"]) == at and body["closed_at"] is None
    r = await client.post(f"/v1/requests/{rid}/retry", headers=auth(ADMIN))
    assert datetime.fromisoformat(r.json()["due_at"]) == NOW and woken == [1, 1]

    naive = await client.post(
        f"/v1/requests/{rid}/schedule", json={"at": "2026-03-03T15:30:00"}, headers=auth(ADMIN)
    )
    assert naive.status_code == 422 and naive.json()["detail"].startswith("body.at:")  # one line, no list
    assert (await client.post("/v1/requests/424242/retry", headers=auth(ADMIN))).status_code == 404
    for edge in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:00-05:00"):  # no UTC time for these
        r = await client.post(f"/v1/requests/{rid}/schedule", json={"at": edge}, headers=auth(ADMIN))
        assert r.status_code == 422, edge

    audit = (await client.get(f"/v1/requests/{rid}", headers=auth(READ))).json()["audit"]
    assert [(e["actor"], e["action"], e["detail"]["from"], e["detail"]["to"]) for e in audit] == [
        ("token:crm", "cancel", "open", "cancelled"),
        ("token:crm", "schedule", "cancelled", "open"),
        ("token:crm", "retry_now", "open", "open"),
    ]
    assert audit[1]["detail"]["at"] == at.astimezone(UTC).isoformat()


async def test_retry_refuses_when_the_number_has_another_open_request(client):
    first = await lead(client, "+12025550160")
    await client.post(f"/v1/requests/{first}/cancel", headers=auth(ADMIN))
    await lead(client, "+12025550160")  # a new open request for the same number
    r = await client.post(f"/v1/requests/{first}/retry", headers=auth(ADMIN))
    assert r.status_code == 409 and "open request" in r.json()["detail"]


async def test_scopes(client):
    rid = await lead(client, "+12025550170", token=INTAKE)  # an [[api.tokens]] intake token
    assert (await client.get("/v1/requests", headers=auth(INTAKE))).status_code == 403
    assert (
        await client.get("/v1/requests", headers=auth(TOKEN))
    ).status_code == 403  # http.token: intake only
    assert (await client.post(f"/v1/requests/{rid}/cancel", headers=auth(READ))).status_code == 403
    assert (await client.get("/v1/requests", headers=auth(ADMIN))).status_code == 200  # admin implies read
    r = await client.post("/v1/callbacks", content=b'{"phone": "+12025550171"}', headers=auth(ADMIN))
    assert r.status_code == 403  # admin does not imply intake
    r = await client.get("/v1/requests", headers=auth("x" * 40))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


async def test_report_figures_match_the_command_lines_json(client, lead_store, sqlite_url):
    for i in range(3):
        await lead(client, f"+1202555018{i}")
    params = {"from": "2026-03-01", "to": "2026-03-08", "by": "day"}
    r = await client.get("/v1/reports", params=params, headers=auth(READ))
    assert r.status_code == 200, r.text
    got = r.json()
    start = datetime(2026, 3, 1, tzinfo=SETTINGS.tz)
    want = reports.report_dict(
        await reports.build_report(
            lead_store.engine,
            start,
            start + timedelta(days=7),
            by=None,
            tz=SETTINGS.tz,
            thresholds=Thresholds(),
        )
    )
    assert got["total"] == want["total"] and got["total"]["requests"] == 3
    assert [row["day"] for row in got["rows"]] == [f"2026-03-0{d}" for d in range(1, 8)]
    assert got["from"] == "2026-03-01T00:00:00+03:00" and got["timezone"] == "Europe/Moscow"
    for bad in ({"from": "yesterday"}, {"from": "2026-03-08", "to": "2026-03-01"}, {"from": "0001-01-01"}):
        r = await client.get("/v1/reports", params=bad, headers=auth(READ))
        assert r.status_code == 422 and isinstance(r.json()["detail"], str), bad
    r = await client.get("/v1/reports", params={"from": "2025-01-01", "by": "hour"}, headers=auth(READ))
    assert r.status_code == 422 and "93 days" in r.json()["detail"]


async def test_docs_pages_load_nothing_from_outside(client):
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html) + re.findall(
            r"""url:\s*'([^']+)'""", html
        )
        assert urls, page
        assert all(u.startswith("/") for u in urls), (page, urls)
        assert "cdn" not in html.lower() and "fonts.googleapis" not in html, page
        for u in urls:
            r = await client.get(u)
            assert r.status_code == 200 and len(r.content) > 100, u
    spec = (await client.get("/openapi.json")).json()
    assert {"/v1/requests", "/v1/requests/{request_id}/schedule", "/v1/reports", "/v1/callbacks"} <= set(
        spec["paths"]
    )


def all_routes(routes) -> list:
    """The whole route table, flat: FastAPI 0.165 keeps an included router as one entry."""
    flat = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        flat.extend(all_routes(inner.routes) if inner is not None else [route])
    return flat


def _scope_of(route: APIRoute) -> set[str]:
    """The scopes the route's dependencies demand (found by walking its dependency tree)."""
    found, todo = set(), list(route.dependant.dependencies)
    while todo:
        d = todo.pop()
        if getattr(d.call, "scope", None):
            found.add(d.call.scope)
        todo.extend(d.dependencies)
    return found


async def refusals(app) -> tuple[list[str], int]:
    """Every route of *app* called without a token, with a wrong one and with each token lacking
    its scope; returns what did not refuse, and how many routes were checked."""
    holders = {"intake": INTAKE, "read": READ, "admin": ADMIN}
    problems, checked = [], 0
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callbackd") as client:
        for route in all_routes(app.routes):
            if isinstance(route, Mount):
                if route.path not in PUBLIC_MOUNTS:
                    problems.append(f"mount {route.path}")
                continue
            if route.path in PUBLIC:
                continue
            scopes = _scope_of(route) if isinstance(route, APIRoute) else set()
            if len(scopes) != 1:
                problems.append(f"{route.path}: scopes {sorted(scopes)}")
                continue
            [scope] = scopes
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            for method in route.methods:
                answers = [
                    (await client.request(method, path)).status_code,
                    (
                        await client.request(method, path, headers=auth("not-a-token-0123456789abcdef"))
                    ).status_code,
                ]
                if answers != [401, 401]:
                    problems.append(f"{method} {path}: {answers} without a token")
                for name, token in holders.items():
                    if scope not in TOKENS.find(token.encode()).granted:
                        code = (await client.request(method, path, headers=auth(token), json={})).status_code
                        if code != 403:
                            problems.append(f"{method} {path}: {code} with the {name} token")
                checked += 1
    return problems, checked


async def test_every_route_refuses_without_a_token_of_the_right_scope(app):
    """Walks the whole route table: a route added later without a scope fails here."""
    problems, checked = await refusals(app)
    assert problems == []
    assert checked >= 7  # intake, list, show, cancel, retry, schedule, reports


async def test_the_route_walk_finds_an_unprotected_route(app):
    from fastapi import APIRouter

    leak = APIRouter()

    @leak.get("/v1/leak")
    async def open_route() -> dict[str, str]:
        return {"numbers": "all of them"}

    app.include_router(leak)
    problems, _ = await refusals(app)
    assert problems == ["/v1/leak: scopes []"]


def test_api_tokens_from_the_config(tmp_path, monkeypatch):
    from callbackd.config import HTTP_TOKEN_ENV, ConfigError, load

    monkeypatch.setenv(HTTP_TOKEN_ENV, TOKEN)
    secret = tmp_path / "crm_token"
    secret.write_text(ADMIN + "\n")
    secret.chmod(0o600)  # a secret file readable by others is refused
    path = tmp_path / "c.toml"
    path.write_text(
        f'[[api.tokens]]\nname = "crm"\ntoken_file = "{secret}"\nscopes = ["admin"]\n\n'
        f'[[api.tokens]]\nname = "site"\ntoken = "{INTAKE}"\nscopes = ["intake"]\n'
    )
    path.chmod(0o600)
    tokens = Tokens.from_config(load(path))
    assert [(t.name, sorted(t.granted)) for t in tokens.tokens] == [
        ("http", ["intake"]),
        ("crm", ["admin", "read"]),
        ("site", ["intake"]),
    ]
    assert tokens.find(ADMIN.encode()).actor == "token:crm" and tokens.find(b"nope") is None
    path.chmod(0o644)  # holds a token: must not be readable by others
    with pytest.raises(ConfigError, match="readable by others"):
        load(path)

    def problems(toml: str) -> str:
        path.write_text(toml)
        path.chmod(0o600)
        with pytest.raises(ConfigError) as exc:
            load(path)
        return str(exc.value)

    one = f'name = "a"\ntoken = "{INTAKE}"\nscopes = ["read"]\n'
    assert "token names must differ" in problems(f"[[api.tokens]]\n{one}\n[[api.tokens]]\n{one}")
    assert "at least 16 characters" in problems(
        '[[api.tokens]]\nname = "a"\ntoken = "short"\nscopes = ["read"]\n'
    )
    assert "exactly one of token and token_file" in problems(
        '[[api.tokens]]\nname = "a"\nscopes = ["read"]\n'
    )
    assert "api.tokens.0.scopes" in problems(
        f'[[api.tokens]]\nname = "a"\ntoken = "{INTAKE}"\nscopes = ["root"]\n'
    )
    assert "api.tokens.0.name" in problems(
        f'[[api.tokens]]\nname = "a b"\ntoken = "{INTAKE}"\nscopes = ["read"]\n'
    )
