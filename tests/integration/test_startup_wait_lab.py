"""A slow boot on the real lab: callbackd starts while Asterisk is down, Asterisk comes up 60 s later.
The daemon never exits in between, tells systemd what it waits for (and pushes the start timeout
on), and sends READY=1 once AMI is logged in and the database answers."""

from __future__ import annotations

import time

import pytest
from daemonkit import NotifySocket
from labdaemon import DaemonProcess, lab_config

pytestmark = pytest.mark.lab


def test_started_before_asterisk_it_waits_then_becomes_ready(lab, tmp_path):
    notify = NotifySocket()
    daemon = None
    lab.run("down")
    try:
        daemon = DaemonProcess(lab_config(tmp_path), env={"NOTIFY_SOCKET": notify.path})
        time.sleep(60)
        assert daemon.proc.poll() is None, "".join(daemon.raw[-40:])
        waiting = notify.lines("STATUS=waiting for AMI at 127.0.0.1:5038 (attempt ")
        assert waiting, notify.lines()
        attempts = sorted({int(m.split("(attempt ")[1].split(",")[0].rstrip(")")) for m in waiting})
        # 1 s doubling up to ami.reconnect_max (30 s): 1+2+4+8+16+30 s, so at least five tries a minute.
        assert attempts[-1] >= 5, waiting
        assert notify.lines("EXTEND_TIMEOUT_USEC="), notify.lines()
        assert not notify.lines("READY=1")
        assert daemon.events("db.migrated") and daemon.events("ami.waiting")
        assert not daemon.events("daemon.ready")

        asterisk_up = time.time()
        lab.run("up")
        daemon.wait_for("ami.login", timeout=90)  # at most one back-off step (30 s) after Asterisk
        ready = notify.wait_for("READY=1", 30)
        assert ready == "READY=1"
        [ready_at] = [t for t, m in notify.messages if m == "READY=1"][:1]
        assert ready_at >= asterisk_up
        assert daemon.proc.poll() is None
        # From now on STATUS= describes the running daemon.
        running = notify.wait_for("STATUS=AMI up at 127.0.0.1:5038, database up; ", 10)
        assert running
        daemon.wait_for("ami.resynced", timeout=30)
    finally:
        if daemon is not None:
            assert daemon.stop() == 0, "".join(daemon.raw[-40:])
        notify.close()
        lab.run("up")  # leave the lab as `asterisk/lab up` left it
