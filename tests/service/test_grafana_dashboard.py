"""The Grafana dashboard in the repo asks only for metrics the daemon serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

from callbackd.adapters.metrics import Live, Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "callbackd.json"


def served_names() -> set[str]:
    m = Metrics(lambda: Live(refusals={"blacklisted": 1}), version="test")
    m.call_recorded("queue_abandon")
    text = m.render().decode()
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }
    return names


def test_every_metric_in_the_dashboard_is_served():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    wanted = {n for e in exprs for n in re.findall(r"\b((?:callbackd|process)_[a-z_]+)\b", e)}
    served = served_names()
    missing = {n for n in wanted if n not in served}
    assert not missing, missing
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {
        "callbackd_calls_offered_total",
        "callbackd_calls_abandoned_total",
        "callbackd_calls_recovered_total",
        "callbackd_build_info",
        "process_resident_memory_bytes",
    } <= wanted
