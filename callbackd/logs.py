"""structlog set-up: JSON lines for journald, a readable console on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_PROBLEM_LEVELS = frozenset({"warning", "error", "critical"})
_DETAIL_KEYS = ("error", "reason", "message", "errors")


class LastProblem:
    """Remembers the last warning or error logged, for the status file; adds nothing to the log.

    Only the event name, time and a short detail are kept: other fields may hold numbers.
    """

    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None

    def __call__(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        level = event_dict.get("level")
        if level in _PROBLEM_LEVELS:
            detail = next((event_dict[k] for k in _DETAIL_KEYS if event_dict.get(k)), None)
            if detail is None and event_dict.get("exc_info"):
                detail = "exception (see the log)"
            self.last = {
                "at": event_dict.get("timestamp"),
                "level": level,
                "event": str(event_dict.get("event")),
                "detail": str(detail)[:300] if detail is not None else None,
            }
        return event_dict


last_problem = LastProblem()


def setup(level: str = "info", fmt: str = "auto") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, last_problem, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (panoramisk, uvicorn, alembic) go through the same renderer.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            # Libraries' warnings and errors reach the status's last error like our own.
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, last_problem],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.INFO) if lvl > logging.DEBUG else lvl)
    # panoramisk logs every lost connection at ERROR with a traceback; ours say it better.
    logging.getLogger("panoramisk").setLevel(logging.CRITICAL if lvl > logging.DEBUG else logging.DEBUG)
    logging.getLogger("alembic").setLevel(logging.WARNING)
