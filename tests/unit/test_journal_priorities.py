"""Every log line carries its syslog priority ("<N>") when standard output is the journal stream,
so `journalctl -p warning` works; the JSON after the prefix stays one object per line."""

from __future__ import annotations

import json
import logging
import os

import pytest
import structlog

from callbackd import logs


@pytest.fixture
def journal(monkeypatch):
    """Standard output replaced by a pipe that $JOURNAL_STREAM names, as systemd sets it up."""
    read_fd, write_fd = os.pipe()
    out = os.fdopen(write_fd, "w", buffering=1)
    st = os.fstat(write_fd)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield out, read_fd
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    structlog.reset_defaults()
    out.close()
    os.close(read_fd)


def lines(out, read_fd) -> list[str]:
    out.flush()
    os.set_blocking(read_fd, False)
    return os.read(read_fd, 1 << 20).decode().splitlines()


def test_structlog_and_stdlib_lines_carry_their_priority(journal):
    out, read_fd = journal
    logs.setup("debug", "json", out)
    log = structlog.get_logger("callbackd")
    log.debug("a.debug")
    log.info("a.info", number="Москва")
    log.warning("a.warning")
    log.error("a.error")
    log.critical("a.critical")
    logging.getLogger("somelib").error("library trouble")
    got = lines(out, read_fd)
    assert [line[:3] for line in got] == ["<7>", "<6>", "<4>", "<3>", "<2>", "<3>"]
    for line in got:
        assert json.loads(line[3:])["event"]  # one JSON object after the prefix
    assert json.loads(got[1][3:])["number"] == "Москва"


def test_exceptions_are_errors(journal):
    out, read_fd = journal
    logs.setup("info", "json", out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("callbackd").exception("a.failed")
    [line] = [x for x in lines(out, read_fd) if x.startswith("<")]
    assert line.startswith("<3>{") and json.loads(line[3:])["event"] == "a.failed"


def test_no_prefix_when_the_output_is_not_the_journal_stream(journal, monkeypatch):
    out, read_fd = journal
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # someone else's stream: a redirected child, a pipe
    logs.setup("info", "json", out)
    structlog.get_logger("callbackd").warning("a.warning")
    [line] = lines(out, read_fd)
    assert json.loads(line)["event"] == "a.warning"


@pytest.mark.parametrize(
    ("level", "n"),
    [("critical", 2), ("error", 3), ("exception", 3), ("warning", 4), ("info", 6), ("debug", 7)],
)
def test_level_to_priority(level, n):
    assert logs.priority(level) == n
    assert logs.priority(level.upper()) == n
