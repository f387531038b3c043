"""HTTP intake for web lead forms, served by hypercorn on the daemon's own event loop.

The body is read by hand rather than declared as a FastAPI body parameter so that
its size is checked before anything parses it, and so that HTTP and MQTT refuse a
form with the same words (:mod:`callbackd.adapters.payloads`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import hypercorn.asyncio
import hypercorn.config
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from callbackd.adapters.payloads import (
    MAX_PAYLOAD,
    LeadForm,
    LeadRefused,
    RefusalKind,
    Submit,
    parse_lead,
    submit_lead,
)
from callbackd.adapters.tokens import Token, Tokens
from callbackd.domain.errors import IntakeUnavailable
from callbackd.domain.intake import IntakeRules, Source

log = structlog.get_logger("callbackd.http")
# The server's own messages ("Running on ...") go through the daemon's logging; only its
# warnings and errors are worth a line.
_SERVER_LOG = logging.getLogger("hypercorn.error")
_SERVER_LOG.setLevel(logging.WARNING)

_STATUS: dict[RefusalKind, int] = {
    "too_large": 413,
    "malformed": 422,
    "invalid": 422,
    "blocked": 403,
    "rate_limited": 429,
}


class Accepted(BaseModel):
    request_id: int | None  # None while queued (the database was away: stored on local disk)
    status: Literal["created", "merged", "duplicate", "queued"]


class Problem(BaseModel):
    detail: str


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _responses() -> dict[int | str, dict[str, Any]]:
    def problem(description: str) -> dict[str, Any]:
        return {"model": Problem, "description": description}

    return {
        401: problem("Missing or wrong bearer token"),
        403: problem("The number may not be called back (blacklist or prefix rules)"),
        413: problem(f"Body over {MAX_PAYLOAD} bytes"),
        422: problem("Malformed body, or a phone number that is not valid"),
        429: problem("Too many new requests for this number or overall; send it again later"),
        503: problem("Could not be stored now; send it again later"),
    }


async def _read_body(request: Request) -> bytes:
    """The body, or 413 as soon as it is known to be too large (before buffering it all)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_PAYLOAD:
        raise LeadRefused("too_large", f"body over {MAX_PAYLOAD} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_PAYLOAD:
            raise LeadRefused("too_large", f"body over {MAX_PAYLOAD} bytes")
    return bytes(body)


def build_app(
    submit: Submit,
    token: str,
    rules: IntakeRules | Callable[[], IntakeRules],
    *,
    extra_routers: Iterable[APIRouter] = (),
    clock: Callable[[], datetime] = _utcnow,
    tokens: Tokens | None = None,
) -> FastAPI:
    """The intake API. ``submit`` is ``Daemon.submit``; ``rules`` refuse a lead before it is stored.

    ``rules`` may be a function returning the rules in force, so a config reload reaches the API.

    ``extra_routers`` are mounted as they are: they bring their own authentication.
    ``tokens`` adds scoped tokens; *token* alone is the intake-only ``http.token``.

    The docs pages (/docs, /redoc) load their scripts from the package, not a CDN, so they
    work on a PBX with no way out.
    """
    if not token:
        raise ValueError("an empty token would let anyone in")
    if tokens is None:
        tokens = Tokens([Token("http", token.encode(), frozenset({"intake"}))])
    authorized = tokens.require("intake")

    app = FastAPIOffline(
        title="callbackd",
        version="1",
        summary="Missed-call and web-lead callbacks",
        static_url="/docs-assets",
        favicon_url="/docs-assets/favicon.png",
    )

    @app.exception_handler(RequestValidationError)
    async def one_line(_request: Request, exc: RequestValidationError) -> JSONResponse:
        """A bad parameter gets one line, as every other refusal does (documented as Problem)."""
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'not valid')}"}, status_code=422)

    @app.post(
        "/v1/callbacks",
        status_code=202,
        response_model=Accepted,
        response_description="Stored: a new request, merged into the open one, or seen before",
        responses=_responses(),
        dependencies=[Depends(authorized)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": LeadForm.model_json_schema()}},
            }
        },
        summary="Ask for a callback",
    )
    async def create_callback(request: Request) -> Accepted:
        """Store a lead; the same number while a request is open merges into it."""
        try:
            form = parse_lead(await _read_body(request))
            current = rules() if callable(rules) else rules
            accepted = await submit_lead(form, source=Source.HTTP, rules=current, submit=submit, now=clock())
        except LeadRefused as exc:
            log.info("lead.refused", source="http", kind=exc.kind, reason=exc.reason)
            raise HTTPException(_STATUS[exc.kind], exc.reason) from None
        except IntakeUnavailable as exc:
            log.error("lead.unavailable", source="http", error=str(exc))
            raise HTTPException(503, "could not store the request; send it again later") from None
        except Exception:
            log.exception("lead.failed", source="http")
            raise HTTPException(503, "could not store the request; send it again later") from None
        return Accepted(request_id=accepted.request_id, status=accepted.status)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for router in extra_routers:
        app.include_router(router)
    return app


class HttpServer:
    """hypercorn as a task of the running loop, with a stop the daemon's exit stack can await.

    ``hypercorn.asyncio.serve`` is given a ``shutdown_trigger``, so it installs no signal
    handlers: the daemon keeps SIGTERM and SIGINT for its own drain.
    """

    def __init__(self, app: FastAPI, host: str, port: int, *, grace: float = 5.0) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.grace = grace
        self._port: int | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when 0 asked for a free one)."""
        if self._port is None:
            raise RuntimeError("not started")
        return self._port

    async def start(self) -> None:
        # Bound here, not by the server: a plain OSError gives the daemon's one-line start-up
        # error, and the port is known at once (also when 0 asked for a free one).
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.requested_port), family=family)
        except OSError as exc:
            raise OSError(
                exc.errno, f"http: cannot listen on {self.host}:{self.requested_port}: {exc.strerror}"
            ) from None
        with sock:
            self._port = int(sock.getsockname()[1])
            # The server gets its own descriptor of the listening socket ("fd://" binds take
            # ownership); this one is closed on leaving the block, the socket keeps listening.
            await self._serve(os.dup(sock.fileno()))
        log.info("http.listening", host=self.host, port=self.port)

    async def _serve(self, fd: int) -> None:
        config = hypercorn.config.Config()
        config.bind = [f"fd://{fd}"]
        config.accesslog = None
        config.errorlog = _SERVER_LOG
        config.include_server_header = False
        config.graceful_timeout = self.grace
        self._task = asyncio.create_task(
            hypercorn.asyncio.serve(self.app, config, shutdown_trigger=self._stop.wait, mode="asgi"),
            name="http",
        )
        # Connections wait in the listening socket's backlog until the server accepts them;
        # what is left to see here is a server that fails at once.
        for _ in range(3):
            await asyncio.sleep(0)
        if self._task.done():
            await self._task
            raise RuntimeError("HTTP server stopped during start-up")

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish for up to ``grace`` seconds."""
        if self._task is None:
            return
        self._stop.set()
        _done, pending = await asyncio.wait({self._task}, timeout=self.grace + 1)
        if pending:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1)
        log.info("http.stopped")
