"""The web console in process on a real SQLite store: sign-in, sessions, CSRF, roles, actions, figures,
and a walk over the whole route table (console and API) proving every route refuses without the right
session or token."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi.routing import APIRoute
from leadkit import RULES, TOKEN
from starlette.routing import Mount
from test_api import ADMIN, INTAKE, PUBLIC, PUBLIC_MOUNTS, READ, TOKENS, _scope_of, all_routes, auth

from callbackd.adapters import api, console, reports
from callbackd.adapters.console.auth import COOKIE, Account, Auth, SignInLimit, hash_password
from callbackd.adapters.console.i18n import DISPOSITIONS, TEXT
from callbackd.adapters.http import build_app
from callbackd.adapters.reports import CsvOptions, ReportSettings
from callbackd.domain.intake import decide
from callbackd.domain.metrics import Thresholds

MSK = ZoneInfo("Europe/Moscow")
SETTINGS = ReportSettings(tz=MSK, thresholds=Thresholds(), csv=CsvOptions())
PASSWORD = "correct horse battery"
ACCOUNTS = [
    Account("vera", hash_password(PASSWORD), "viewer"),
    Account("oleg", hash_password(PASSWORD), "operator", "ru"),
    Account("anna", hash_password(PASSWORD), "admin"),
]
CONSOLE_PUBLIC = {("/console/login", "GET"), ("/console/login", "POST")}
CONSOLE_PUBLIC_MOUNTS = {"/console/static"}


def make_auth(**kw) -> Auth:
    kw.setdefault("limit", SignInLimit(3, 60))
    return Auth(ACCOUNTS, **kw)


@pytest.fixture
def app(submit, lead_store, sqlite_url):
    api_routes = api.router(lead_store, TOKENS, db_url=sqlite_url, settings=SETTINGS)
    app = build_app(submit, TOKEN, RULES, tokens=TOKENS, extra_routers=[api_routes])
    pages = console.router(
        lead_store,
        make_auth(),
        db_url=sqlite_url,
        settings=lambda: SETTINGS,
        intake=console.submitter(submit),
    )
    console.install(app, pages)
    return app


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://callbackd")


async def sign_in(c: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    return await c.post("/console/login", data={"account": name, "password": password})


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def add(submit, phone: str) -> int:
    from callbackd.domain.intake import Contact, Source

    c = Contact(
        source=Source.HTTP, source_ref=phone, raw_number=phone, reason="web_form", at=datetime.now(UTC)
    )
    return (await submit(c)).request_id


async def test_sign_in_sets_a_safe_cookie_and_wrong_passwords_are_limited_per_account(app):
    async with client_for(app) as c:
        assert (await c.get("/console/", follow_redirects=False)).headers["location"] == "/console/login"
        r = await sign_in(c, "vera")
        assert r.status_code == 303 and r.headers["location"] == "/console/"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "Secure" in cookie
        assert "SameSite=strict" in cookie and "Path=/console" in cookie
    async with client_for(app) as c:
        for _ in range(3):
            assert (await sign_in(c, "anna", "guess")).status_code == 401
        blocked = await sign_in(c, "anna")  # the right password, but the account is locked for now
        assert blocked.status_code == 429 and "Too many" in blocked.text
        assert (await sign_in(c, "oleg")).status_code == 303  # other accounts are not
        assert (await sign_in(c, "nobody", "x")).status_code == 401


async def test_sessions_cannot_be_forged_and_forms_need_the_csrf_token(app, submit):
    rid = await add(submit, "+12025550301")
    async with client_for(app) as c:
        await sign_in(c, "anna")
        page = (await c.get(f"/console/requests/{rid}")).text
        token = csrf_of(page)
        r = await c.post(f"/console/requests/{rid}", data={"action": "cancel"})
        assert r.status_code == 403
        r = await c.post(f"/console/requests/{rid}", data={"action": "cancel", "csrf": token + "x"})
        assert r.status_code == 403
        value = c.cookies[COOKIE]
    async with client_for(app) as forged:
        body, sig = value.rsplit(".", 1)
        forged.cookies.set(COOKIE, body.replace("a", "b", 1) + "." + sig, domain="callbackd", path="/console")
        assert (await forged.get("/console/live.json")).status_code == 401
        other = make_auth()  # another key, as after a restart without session_key_file
        cookie, _ = other.issue(ACCOUNTS[2])
        forged.cookies.set(COOKIE, cookie, domain="callbackd", path="/console")
        assert (await forged.get("/console/live.json")).status_code == 401


async def test_operator_actions_are_audited_and_viewers_may_only_look(app, submit, lead_store):
    rid = await add(submit, "+12025550302")
    async with client_for(app) as c:
        await sign_in(c, "vera")
        token = csrf_of((await c.get(f"/console/requests/{rid}")).text)
        r = await c.post(f"/console/requests/{rid}", data={"action": "cancel", "csrf": token})
        assert r.status_code == 403
    async with client_for(app) as c:
        await sign_in(c, "oleg")
        page = (await c.get(f"/console/requests/{rid}")).text
        assert "Заявка" in page  # oleg's language is Russian
        token = csrf_of(page)
        post = lambda **data: c.post(f"/console/requests/{rid}", data={"csrf": token, **data})  # noqa: E731
        assert (await post(action="cancel")).headers["location"].endswith("?m=done")
        assert (
            (await post(action="cancel")).headers["location"].endswith("?m=refused")
        )  # the state table says no
        at = (datetime.now(MSK) + timedelta(days=1)).replace(second=0, microsecond=0)
        assert (await post(action="schedule", at=at.strftime("%Y-%m-%dT%H:%M"))).status_code == 303
        assert (await post(action="note", text="<b>call after 5</b>")).status_code == 303
        assert (await post(action="disposition", disposition="call_later")).status_code == 303
        assert (await post(action="disposition", disposition="<script>")).status_code == 422
        assert (await post(action="schedule", at="soon")).status_code == 422
        page = (await c.get(f"/console/requests/{rid}")).text
        assert "&lt;b&gt;call after 5&lt;/b&gt;" in page and "<b>call after 5" not in page  # escaped
    req, _, _ = await lead_store.get_request(rid)
    assert req.status == "open" and req.due_at == at.astimezone(UTC) and req.disposition == "call_later"
    trail = await lead_store.audit_trail(rid)
    assert [(e.actor, e.action) for e in trail] == [
        ("user:oleg", "cancel"),
        ("user:oleg", "schedule"),
        ("user:oleg", "note"),
        ("user:oleg", "disposition"),
    ]


async def test_live_view_lists_open_requests_with_why_and_adds_one_by_hand(app, submit):
    await add(submit, "+12025550303")
    async with client_for(app) as c:
        await sign_in(c, "oleg")
        live = (await c.get("/console/live.json")).json()
        assert live["open_count"] == 1 and live["open"][0]["number"] == "+12025550303"
        assert live["open"][0]["why"] == "why_operator"  # due now, always open: waits for an operator
        token = csrf_of((await c.get("/console/")).text)
        r = await c.post("/console/requests", data={"csrf": token, "phone": "2025550304", "note": "asked"})
        assert r.status_code == 303
        assert (await c.get("/console/live.json")).json()["open_count"] == 2


async def test_figures_page_shows_the_reports_figures(app, submit, lead_store):
    for i in range(3):
        await add(submit, f"+1202555031{i}")
    async with client_for(app) as c:
        await sign_in(c, "vera")
        html = (await c.get("/console/figures")).text
    today = datetime.now(MSK).date()
    from callbackd.domain.periods import midnight

    rep = await reports.build_report(
        lead_store.engine, midnight(today, MSK), midnight(today + timedelta(days=1), MSK),
        by=None, tz=MSK, thresholds=Thresholds(),
    )  # fmt: skip
    total = reports.report_dict(rep)["total"]
    shown = dict(re.findall(r'data-figure="([a-z_]+)">([^<]*)<', html))
    assert shown["offered"] == str(total["offered"]) and shown["car_pct"] == "—"  # no calls today: no rate
    assert 'data-series="CAR"' in html and 'data-series="field figures"' in html
    assert 'data-value="80.50"' in html  # the field figure for the first try


def test_both_languages_are_complete():
    assert all(len(pair) == 2 and all(pair) for pair in [*TEXT.values(), *DISPOSITIONS.values()])


async def test_trusted_proxy_header_only_from_a_trusted_address(submit, lead_store, sqlite_url):
    for trusted, expected in ((frozenset({"127.0.0.1"}), 200), (frozenset({"10.9.9.9"}), 401)):
        a = make_auth(proxy_header="X-Remote-User", trusted_proxies=trusted)
        app = build_app(submit, TOKEN, RULES)
        console.install(app, console.router(lead_store, a, db_url=sqlite_url, settings=lambda: SETTINGS))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="https://callbackd") as c:
            r = await c.get("/console/live.json", headers={"X-Remote-User": "anna"})
            assert r.status_code == expected, trusted
            assert (
                await c.get("/console/live.json", headers={"X-Remote-User": "mallory"})
            ).status_code == 401


def _role_of(route: APIRoute) -> set[str]:
    found, todo = set(), list(route.dependant.dependencies)
    while todo:
        d = todo.pop()
        if getattr(d.call, "role", None):
            found.add(d.call.role)
        todo.extend(d.dependencies)
    return found


async def test_every_console_and_api_route_refuses_without_a_session_or_token_of_the_right_scope(app):
    """The whole route table of the daemon's app with the API and the console mounted."""
    viewer = client_for(app)
    await sign_in(viewer, "vera")
    checked, problems = 0, []
    async with client_for(app) as anonymous:
        for route in all_routes(app.routes):
            if isinstance(route, Mount):
                if route.path not in PUBLIC_MOUNTS | CONSOLE_PUBLIC_MOUNTS:
                    problems.append(f"mount {route.path}")
                continue
            if route.path in PUBLIC:
                continue
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            for method in sorted(route.methods):
                if (route.path, method) in CONSOLE_PUBLIC:
                    continue
                checked += 1
                roles, scopes = _role_of(route), _scope_of(route)
                if len(roles) + len(scopes) != 1:
                    problems.append(f"{method} {route.path}: roles {roles}, scopes {scopes}")
                    continue
                r = await anonymous.request(method, path, follow_redirects=False)
                refused = r.status_code == 401 or (
                    r.status_code == 303 and r.headers["location"] == "/console/login"
                )
                if not refused:
                    problems.append(f"{method} {path}: {r.status_code} without credentials")
                if roles == {"operator"} or roles == {"admin"}:
                    r = await viewer.request(method, path, data={"csrf": "x"})
                    if r.status_code != 403:
                        problems.append(f"{method} {path}: {r.status_code} for a viewer")
                if scopes and (await viewer.request(method, path)).status_code != 401:
                    problems.append(f"{method} {path}: a console session passed")  # a session is no token
    await viewer.aclose()
    assert problems == []
    assert checked >= 16


def test_hash_password_command(monkeypatch, capsys):
    import io

    from argon2 import PasswordHasher

    from callbackd import cli

    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main(["console", "hash-password"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("$argon2id$") and PasswordHasher().verify(hashed, PASSWORD)
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["console", "hash-password"]) == cli.EXIT_USAGE  # a bad value: one line, exit 2


_ = (ADMIN, INTAKE, READ, auth, decide, json)
