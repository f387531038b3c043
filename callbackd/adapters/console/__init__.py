"""The web console on the daemon's HTTP listener: live view, figures with charts, request pages.

Everything it needs is in this package (templates, CSS, a small script): it works on a
PBX with no way out. Pages need a session (:mod:`.auth`); each route names the least
role it needs (viewer, operator, admin) and the route-table test checks that every route
does. Actions go through the store's request state table and the audit log, with the
account as the actor.
"""

# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at definition.

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import func, select

from callbackd.adapters import models as m
from callbackd.adapters.console import charts
from callbackd.adapters.console.auth import COOKIE, Auth, Session
from callbackd.adapters.console.i18n import DISPOSITIONS, LANGUAGES, translator
from callbackd.adapters.reports import ReportSettings
from callbackd.adapters.reports.figures import FiguresCache, build_figures
from callbackd.adapters.reports.json_out import figures_dict
from callbackd.adapters.store import NotFound, NumberHasOpenRequest, Store
from callbackd.domain.errors import IllegalTransition
from callbackd.domain.metrics import Grouping
from callbackd.domain.states import OPEN_STATUSES, RequestEvent

log = structlog.get_logger("callbackd.console")
HERE = Path(__file__).parent
PREFIX = "/console"
LANG_COOKIE = "callbackd_lang"
_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))


class SignInNeeded(Exception):
    """Raised by page dependencies; answered with a redirect to the sign-in page."""


def static_app() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


def _fmt_time(value: datetime | None, tz: Any) -> str:
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def why(req: Any, now: datetime, calendar: Any) -> str:
    """Why an open request is not being dialled now: the key of a phrase in :mod:`.i18n`."""
    if req.status == "dialling":
        return "why_dialling"
    due = req.due_at
    if due is None or due <= now:
        return "why_operator" if calendar.is_open(now) else "why_hours"
    if req.preferred_at is not None and req.preferred_at == due:
        return "why_chosen"
    opening = calendar.opening_of(due)
    return "why_hours" if opening is not None and opening == due else "why_ladder"


def live_view(daemon: Any) -> dict[str, Any]:
    """What only the running daemon knows: operators, callers waiting per queue, calls in flight."""
    now = datetime.now(UTC).timestamp()
    pool = daemon.pool
    operators = []
    for mem in sorted(pool.members.values(), key=lambda x: x.name or x.interface):
        if mem.paused:
            state = "op_paused"
        elif pool.is_free(mem, now):
            state = "op_free"
        elif mem.status in (5, 0):  # unavailable, unknown
            state = "op_offline"
        else:
            state = "op_busy"
        operators.append({"name": mem.name or mem.interface, "interface": mem.interface, "state": state})
    dialer = getattr(daemon, "dialer", None)
    flights = []
    for run in list(dialer.runs.values()) if dialer is not None else []:
        stage = "stage_talking" if run.client_answered_at else (
            "stage_client" if run.operator_answered_at else "stage_operator")  # fmt: skip
        flights.append(
            {
                "request_id": run.request_id,
                "try_no": run.try_no,
                "operator": run.operator,
                "number": daemon._num(run.number),
                "stage": stage,
            }
        )
    ami = getattr(daemon, "ami", None)
    return {
        "ami_connected": bool(ami is not None and ami.connected),
        "operators": operators,
        "waiting": dict(sorted(pool.waiting.items())),
        "in_flight": flights,
    }


def router(
    store: Store,
    auth: Auth,
    *,
    db_url: str,
    settings: Callable[[], ReportSettings],
    live: Callable[[], dict[str, Any]] = lambda: {"operators": [], "waiting": {}, "in_flight": []},
    default_language: str = "en",
    wake: Callable[[], None] = lambda: None,
    intake: Callable[..., Any] | None = None,
    refresh: float = 0.5,
    figures_cache: FiguresCache | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    r = APIRouter(prefix=PREFIX, include_in_schema=False)
    figures_cache = figures_cache if figures_cache is not None else FiguresCache()

    def session_of(request: Request) -> Session | None:
        client = request.client.host if request.client else None
        return auth.read(request.cookies.get(COOKIE), client=client, headers=request.headers)

    def require(role: str, *, page: bool = True):
        def check(request: Request) -> Session:
            s = session_of(request)
            if s is None:
                if page and request.method == "GET":
                    raise SignInNeeded()
                raise HTTPException(401, "sign in first")
            if not s.account.may(role):
                raise HTTPException(403, "your role may not do this")
            return s

        check.role = role  # type: ignore[attr-defined]  # read by the route-table test
        return check

    viewer_page = Depends(require("viewer"))
    viewer_data = Depends(require("viewer", page=False))
    operator = Depends(require("operator", page=False))

    def language(request: Request, s: Session | None) -> str:
        chosen = request.cookies.get(LANG_COOKIE)
        if chosen in LANGUAGES:
            return chosen
        if s is not None and s.account.language:
            return s.account.language
        return default_language

    def page(name: str, request: Request, s: Session | None, **ctx: Any) -> HTMLResponse:
        lang = language(request, s)
        html = _env.get_template(name).render(t=translator(lang), lang=lang, session=s, prefix=PREFIX, **ctx)
        resp = HTMLResponse(html)
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
        return resp

    async def csrf_form(request: Request, s: Session) -> dict[str, str]:
        form = await request.form()
        if form.get("csrf") != s.csrf:
            raise HTTPException(403, "the form is stale or forged: reload the page")
        return {k: str(v) for k, v in form.items()}

    # -- sign-in ----------------------------------------------------------------------------

    @r.get("/login")
    async def login_form(request: Request) -> HTMLResponse:
        return page("login.html", request, None, error=None)

    @r.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("account", ""))[:64], str(form.get("password", ""))[:256]
        result = await asyncio.to_thread(auth.check_password, name, password)
        if isinstance(result, str):
            log.info("console.sign_in_refused", account=name, why=result)
            resp = page("login.html", request, None, error=result)
            resp.status_code = 429 if result == "blocked" else 401
            return resp
        cookie, _ = auth.issue(result)
        log.info("console.signed_in", account=name)
        resp = RedirectResponse(f"{PREFIX}/", status_code=303)
        resp.set_cookie(value=cookie, **auth.cookie_args())
        return resp

    @r.post("/logout")
    async def logout(request: Request, s: Session = viewer_data) -> Response:
        await csrf_form(request, s)
        resp = RedirectResponse(f"{PREFIX}/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/console")
        return resp

    @r.post("/language")
    async def set_language(request: Request, s: Session = viewer_data) -> Response:
        form = await csrf_form(request, s)
        lang = form.get("language", "en")
        resp = RedirectResponse(
            form.get("back", f"{PREFIX}/") if form.get("back", "").startswith(PREFIX) else f"{PREFIX}/",
            status_code=303,
        )
        if lang in LANGUAGES:
            resp.set_cookie(
                LANG_COOKIE, lang, path="/console", samesite="strict", httponly=True, secure=auth.secure
            )
        return resp

    # -- live ---------------------------------------------------------------------------------

    async def snapshot() -> dict[str, Any]:
        s = settings()
        now = datetime.now(UTC)
        calendar = store.schedule.calendar
        async with store.session() as db:
            q = (
                select(m.Request)
                .where(m.Request.status.in_([x.value for x in OPEN_STATUSES]))
                .order_by(m.Request.due_at, m.Request.id)
                .limit(50)
            )
            rows = list((await db.execute(q)).scalars())
            count = (
                await db.execute(
                    select(func.count())
                    .select_from(m.Request)
                    .where(m.Request.status.in_([x.value for x in OPEN_STATUSES]))
                )
            ).scalar_one()
        return {
            **live(),
            "open_count": count,
            "open": [
                {
                    "id": x.id,
                    "number": x.number,
                    "status": x.status,
                    "attempts": x.attempts_made,
                    "due_at": _fmt_time(x.due_at, s.tz),
                    "why": why(x, now, calendar),
                }
                for x in rows
            ],
        }

    @r.get("/")
    async def live_page(request: Request, s: Session = viewer_page) -> HTMLResponse:
        return page("live.html", request, s, data=await snapshot())

    @r.get("/live.json")
    async def live_json(s: Session = viewer_data) -> JSONResponse:
        return JSONResponse(await snapshot())

    @r.get("/live/stream")
    async def live_stream(request: Request, s: Session = viewer_data) -> StreamingResponse:
        async def events():
            last = None
            quiet = 0.0
            while not await request.is_disconnected():
                data = json.dumps(await snapshot(), sort_keys=True)
                if data != last:
                    yield f"data: {data}\n\n"
                    last, quiet = data, 0.0
                elif quiet > 15:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                await asyncio.sleep(refresh)
                quiet += refresh

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    # -- figures ------------------------------------------------------------------------------

    @r.get("/figures")
    async def figures(request: Request, s: Session = viewer_page) -> HTMLResponse:
        st = settings()
        now = clock()
        today = now.astimezone(st.tz).date()
        try:
            first = datetime.strptime(request.query_params.get("from", ""), "%Y-%m-%d").date()
        except ValueError:
            first = today
        try:
            last = datetime.strptime(request.query_params.get("to", ""), "%Y-%m-%d").date()
        except ValueError:
            last = first
        last = max(last, first)
        if (last - first).days > 366:
            last = first + timedelta(days=366)
        by = Grouping.HOUR if first == last else Grouping.DAY
        time_rep, queue_rep, op_rep, reach = await asyncio.to_thread(
            _figures_in_thread, db_url, first, last, by, st, figures_cache, now
        )
        total = figures_dict(time_rep.total)
        labels = [k for k, _ in time_rep.rows]
        chart = charts.grouped_bars(
            labels,
            [
                ("CAR", [None if f.car is None else 100 * f.car for _, f in time_rep.rows]),
                (
                    "net lost",
                    [None if f.net_lost_rate is None else 100 * f.net_lost_rate for _, f in time_rep.rows],
                ),
            ],
        )
        t = translator(language(request, s))
        ours = charts.reach_shares(reach)
        reach_chart = charts.grouped_bars(
            ["1", "2", "3", "4", "5+"], [(t("ours"), ours), (t("field"), list(charts.FIELD_REACH))]
        )
        return page(
            "figures.html", request, s, first=first.isoformat(), last=last.isoformat(), total=total,
            fig=time_rep.total, chart=chart, reach_chart=reach_chart,
            queues=[(k, figures_dict(f)) for k, f in queue_rep.rows],
            operators=[(k, figures_dict(f)) for k, f in op_rep.rows],
        )  # fmt: skip

    # -- requests -----------------------------------------------------------------------------

    @r.get("/requests/{request_id}")
    async def request_page(request: Request, request_id: int, s: Session = viewer_page) -> HTMLResponse:
        st = settings()
        try:
            req, attempts, contacts = await store.get_request(request_id)
        except NotFound:
            raise HTTPException(404, "no such request") from None
        audit = await store.audit_trail(request_id)
        t = translator(language(request, s))
        events = [(c.at, "contact", _contact_text(c)) for c in contacts]
        events += [(a.started_at, "attempt", _attempt_text(a)) for a in attempts]
        events += [(e.at, "audit", f"{e.actor}: {e.action} {_detail(e.detail)}") for e in audit]
        events.sort(key=lambda e: e[0])
        return page(
            "request.html", request, s, req=req, tz=st.tz, fmt=lambda v: _fmt_time(v, st.tz),
            timeline=[(_fmt_time(at, st.tz), t(kind), text) for at, kind, text in events],
            dispositions=list(DISPOSITIONS), message=request.query_params.get("m"),
        )  # fmt: skip

    @r.post("/requests/{request_id}")
    async def request_action(request: Request, request_id: int, s: Session = operator) -> Response:
        form = await csrf_form(request, s)
        action = form.get("action", "")
        now = datetime.now(UTC)
        message = "done"
        try:
            if action == "cancel":
                await store.admin_event(request_id, RequestEvent.CANCEL, now, actor=s.account.actor)
            elif action == "retry":
                await store.admin_event(request_id, RequestEvent.RETRY_NOW, now, actor=s.account.actor)
                wake()
            elif action == "schedule":
                try:
                    local = datetime.strptime(form.get("at", ""), "%Y-%m-%dT%H:%M")
                    at = local.replace(tzinfo=settings().tz).astimezone(UTC)
                except (ValueError, OverflowError):
                    raise HTTPException(422, "at: use the date and time picker") from None
                await store.admin_event(request_id, RequestEvent.SCHEDULE, now, at=at, actor=s.account.actor)
                wake()
            elif action in ("note", "disposition"):
                value = form.get("text" if action == "note" else "disposition", "").strip()[:1000]
                if action == "disposition" and value not in DISPOSITIONS:
                    raise HTTPException(422, "unknown disposition")
                if not value:
                    raise HTTPException(422, "empty note")
                await store.annotate(request_id, action, value, now, actor=s.account.actor)
            else:
                raise HTTPException(422, "unknown action")
        except NotFound:
            raise HTTPException(404, "no such request") from None
        except (IllegalTransition, NumberHasOpenRequest):
            message = "refused"
        log.info("console.action", request_id=request_id, action=action, actor=s.account.actor)
        return RedirectResponse(f"{PREFIX}/requests/{request_id}?m={message}", status_code=303)

    @r.post("/requests")
    async def add_request(request: Request, s: Session = operator) -> Response:
        form = await csrf_form(request, s)
        if intake is None:
            raise HTTPException(503, "adding requests is not wired")
        rid = await intake(
            form.get("phone", "")[:40], form.get("name", "")[:80], form.get("note", "")[:1000], s
        )
        if rid is None:
            raise HTTPException(422, "the number cannot be called back")
        return RedirectResponse(f"{PREFIX}/requests/{rid}?m=done", status_code=303)

    return r


def _contact_text(c: Any) -> str:
    return f"{c.source}: {c.reason}" + (f" ({c.waited} s)" if c.waited else "")


def _attempt_text(a: Any) -> str:
    return f"#{a.try_no} {a.operator} → {a.outcome or a.status}" + (
        f", {a.talk_seconds} s" if a.talk_seconds else ""
    )


def _detail(detail: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items())


def _figures_in_thread(
    url: str,
    first: date,
    last: date,
    by: Grouping,
    st: ReportSettings,
    cache: FiguresCache | None,
    now: datetime | None = None,
) -> Any:
    from callbackd.adapters import db

    async def go() -> Any:
        engine = db.make_engine(url, read_only=True)
        try:
            return await build_figures(
                engine, first, last, by=by, tz=st.tz, thresholds=st.thresholds, cache=cache, now=now
            )
        finally:
            await engine.dispose()

    return asyncio.run(go())


def install(app: Any, console_router: APIRouter) -> None:
    """Mount the pages, their assets, and the redirect to the sign-in page on the app."""
    app.include_router(console_router)
    app.mount(f"{PREFIX}/static", static_app(), name="console-static")

    @app.exception_handler(SignInNeeded)
    async def to_sign_in(_request: Request, _exc: SignInNeeded) -> Response:
        return RedirectResponse(f"{PREFIX}/login", status_code=303)


def submitter(submit: Callable[[Any], Any]) -> Callable[..., Any]:
    """A request added by hand in the console goes where every contact goes (``Daemon.submit``)."""
    from callbackd.domain.intake import Contact, Source

    async def add(phone: str, name: str, note: str, s: Session) -> int | None:
        contact = Contact(
            source=Source.ADMIN,
            source_ref=uuid.uuid4().hex,
            raw_number=phone,
            reason="admin",
            at=datetime.now(UTC),
            name=name,
            comment=(f"[{s.account.actor}] {note}" if note else ""),
        )
        result = await submit(contact)
        return result.request_id

    return add


def auth_from_config(cfg: Any) -> Auth:
    from callbackd.adapters.console.auth import Account, SignInLimit

    c = cfg.console
    key = c.session_key_file.read_bytes().strip() if c.session_key_file else None
    return Auth(
        [Account(a.name, a.password_hash, a.role, a.language) for a in c.accounts],
        key=key,
        ttl=c.session_ttl.total_seconds(),
        secure=c.secure_cookies,
        proxy_header=c.trusted_user_header,
        trusted_proxies=frozenset(c.trusted_proxies),
        limit=SignInLimit(c.sign_in_attempts, c.sign_in_window.total_seconds()),
    )
