"""Answering-machine detection on the lab: the PSTN's scripted machine and person, told apart by AMD()."""

from __future__ import annotations

import asyncio
import json

import pytest
from labdaemon import cli, lab_config, requests_json

pytestmark = pytest.mark.lab


async def wait(daemon, name, timeout=30, **match):
    return await asyncio.to_thread(daemon.wait_for, name, timeout, **match)


async def test_a_machine_is_hung_up_as_voicemail_and_a_person_is_bridged(
    lab, fresh, daemon_factory, tmp_path
):
    number = "+12025550311"
    # The first call meets a 4 s recorded greeting, the retry a person who says one word.
    lab.pstn(number, "machine,human")
    config = lab_config(
        tmp_path,
        replace={
            'poll_interval = "1s"': 'poll_interval = "1s"\namd = true',
            'delays = ["1h", "3h", "6h"]': 'delays = ["1h"]\noutcome_delays = { voicemail = "5s" }',
        },
    )
    daemon = daemon_factory(config)
    res = cli(config, "requests", "add", number, "--name", "Machine Then Person")
    assert "created" in res.stdout, res.stdout + res.stderr

    o1 = await wait(daemon, "attempt.outcome", 60, number=number, try_no=1)
    assert o1["outcome"] == "voicemail" and o1["request_status"] == "open", o1
    o2 = await wait(daemon, "attempt.outcome", 60, number=number, try_no=2)
    assert o2["outcome"] == "answered" and o2["request_status"] == "reached", o2

    calls = [json.loads(line) for line in lab.pstn("--log").splitlines() if line.startswith("{")]
    mine = [c for c in calls if c.get("number", "").endswith("2025550311")]
    spoke = [(c["behaviour"], c["seconds"]) for c in mine if c["event"] == "speaks"]
    assert spoke == [("machine", 4.0), ("human", 0.6)], mine
    # The machine was hung up by Asterisk before its greeting ended: nobody was bridged to it.
    first = [c for c in mine if c.get("behaviour") == "machine"]
    assert [c["event"] for c in first][-2:] == ["speaks", "bye-received"], first
    [req] = [r for r in requests_json(config, "list", "--json") if r["number"] == number]
    assert req["attempts"] == 2
