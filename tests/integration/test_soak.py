"""The CI-sized soak: 40 calls, 2 kill -9s, an Asterisk restart, a Mosquitto restart, the SQLite file
locked for 40 s while traffic goes on, two AMI cuts mid-Originate and a second daemon with admin
cancel/retry, then every invariant (every abandon raised while a daemon was attached is in the
database). The full one: ``python tests/integration/soak.py --calls 500 --kills 10``."""

from __future__ import annotations

import json

import pytest
from soak import Soak

pytestmark = pytest.mark.lab


async def test_soak_ci_sized(lab, tmp_path):
    report = await Soak(tmp_path, calls=40, kills=2, asterisk_restarts=1, seed=20261123).run(
        rate=1.0, settle=420
    )
    print(json.dumps(report, indent=2))
    assert report["kills"] == 2 and report["asterisk_restarts"] == 1
    assert report["mosquitto_restarts"] == 1 and report["db_outages"] == 1
    assert report["abandons_checked"] > 0 and report["left_in_spool"] == 0
    assert report["ami_cuts"] == 2
    assert report["missed_checked"] > 0 and sum(report["attempts"].values()) > 0
    assert report["settled"], report
    assert not any(report["violations"].values()), report["violation_examples"]
