"""structlog set-up: JSON lines for journald, a readable console on a TTY."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

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

# syslog priorities (sd-daemon(3) "<N>" prefixes): journald strips them and files the line under N,
# so `journalctl -u callbackd -p warning` shows warnings and worse.
PRIORITIES = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}


def priority(level: object) -> int:
    """The syslog priority of a structlog or stdlib level name (info when unknown)."""
    return PRIORITIES.get(str(level).lower(), 6)


def to_journal(stream: TextIO) -> bool:
    """True when *stream* is the journal stream systemd connected (``$JOURNAL_STREAM`` is
    ``DEVICE:INODE`` of it; compared as systemd.exec(5) says, so a child's redirected output is not)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


class PriorityPrefix:
    """Wraps the renderer: ``<N>`` before each rendered line (the JSON object follows unchanged)."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> str:
        level = event_dict.get("level", method)
        text = self.renderer(logger, method, event_dict)
        return f"<{priority(level)}>{text}"


def setup(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Log to *stream* (standard output): console on a TTY, else JSON; "<N>" priorities into the journal."""
    stream = stream or sys.stdout
    lvl = getattr(logging, level.upper(), logging.INFO)
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    if to_journal(stream):
        renderer = PriorityPrefix(renderer)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, last_problem, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (panoramisk, hypercorn, alembic) go through the same renderer.
    handler = logging.StreamHandler(stream)
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
