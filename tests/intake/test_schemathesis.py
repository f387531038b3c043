"""Schemathesis against the OpenAPI the daemon serves: intake and API v1, the real app behind
Daemon.submit and a real SQLite store, over a real socket. No answer may be a 5xx or stray from the
documented schema, and nothing stored may carry a number that is not E.164."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from daemonkit import built_daemon, daemon_config
from hypothesis import HealthCheck, settings
from leadkit import TOKEN
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from sqlalchemy import select

from callbackd.adapters import api
from callbackd.adapters import models as m
from callbackd.adapters.http import HttpServer, build_app
from callbackd.adapters.reports import ReportSettings
from callbackd.adapters.tokens import Token, Tokens

EVERYTHING = "schemathesis-token-0123456789abcdef"  # intake and admin: every route is exercised
AUTH = {"Authorization": f"Bearer {EVERYTHING}"}
E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
UNSAFE_IN_NAMES = set('"<>;&${}\r\n')


class Served:
    """The intake on its own event loop in a thread: schemathesis calls it synchronously."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="served-intake", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def start(self) -> None:
        self.stack = AsyncExitStack()
        cfg = daemon_config(self.tmp, schedule={"hours": {"mon-sun": "00:00-24:00"}})
        self.daemon = d = await self.stack.enter_async_context(built_daemon(cfg))
        tokens = Tokens(
            [
                Token("http", TOKEN.encode(), frozenset({"intake"})),
                Token("all", EVERYTHING.encode(), frozenset({"intake", "admin"})),
            ]
        )
        routes = api.router(
            d.store, tokens, db_url=cfg.database.url, settings=ReportSettings.from_config(cfg)
        )
        app = build_app(d.submit, TOKEN, d.rules, tokens=tokens, extra_routers=[routes])
        self.server = HttpServer(app, "127.0.0.1", 0)
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        await self.stack.aclose()

    async def stored(self) -> tuple[list[Any], list[Any]]:
        async with self.daemon.store.session() as s:
            contacts = list((await s.execute(select(m.Contact))).scalars())
            requests = list((await s.execute(select(m.Request))).scalars())
        return contacts, requests


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("schemathesis"))
    served.call(served.start())
    try:
        yield served
    finally:
        served.call(served.stop())
        served.loop.call_soon_threadsafe(served.loop.stop)
        served.thread.join(10)
        served.loop.close()


@pytest.fixture(scope="module")
def api_schema(served: Served) -> Any:
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{served.server.port}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_none_is_a_server_error(case: Any) -> None:
    case.call_and_validate(
        headers=AUTH,
        timeout=10,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )


def test_nothing_stored_carries_a_bad_number_or_name(served: Served) -> None:
    """Runs after the generated cases above (pytest keeps the file's order)."""
    contacts, requests = served.call(served.stored())
    assert contacts, "the generated cases never reached the store"
    for row in contacts + requests:
        assert E164_RE.match(row.number), row.number
        assert not UNSAFE_IN_NAMES & set(row.name), row.name
    for row in contacts:
        assert row.disposition == "schedule" and row.request_id is not None  # web refusals: not stored
