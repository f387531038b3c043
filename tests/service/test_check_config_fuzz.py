"""`check-config` never crashes: random TOML documents (real section and key names, values of any
TOML type) and random text give exit 0 or the config-error exit with a message, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from datetime import date, datetime, time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callbackd import cli
from callbackd.config import Config

SECTIONS = {
    name: list(f.annotation.model_fields)
    for name, f in Config.model_fields.items()
    if hasattr(f.annotation, "model_fields")
}
TOP_KEYS = [name for name in Config.model_fields if name not in SECTIONS]

scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(
        ["1s", "5m", "-1h", "0", "mon-fri=09:00-18:00", "Europe/Moscow", "Mars/Base", "", "+7495"]
    ),
    st.dates(),
    st.times(),
    st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=6), inner, max_size=3),
    ),
    max_leaves=6,
)


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=True)  # \\uXXXX escapes are TOML too, surrogates aside
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date | time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


@st.composite
def documents(draw) -> str:
    lines = []
    for key in draw(st.lists(st.sampled_from(TOP_KEYS), max_size=2, unique=True)):
        lines.append(f"{key} = {toml_value(draw(values))}")
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        if draw(st.booleans()):  # the whole section as something else: ami = "oops"
            lines.insert(0, f"{section} = {toml_value(draw(values))}")
            continue
        lines.append(f"[{section}]")
        keys = SECTIONS[section] + ["bogus"]
        for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            lines.append(f"{key} = {toml_value(draw(values))}")
    return "\n".join(lines) + "\n"


def check(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "callbackd.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        os.chmod(path, 0o600)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["--config", str(path), "check-config"])
    message = err.getvalue()
    assert code in (0, cli.EXIT_CONFIG), (code, message)
    assert "Traceback" not in message
    if code:
        assert message.startswith(str(path)) or message.startswith("callbackd: "), message
        assert message.strip(), "an error without a message"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_random_documents_never_crash_check_config(doc):
    check(doc)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_text_never_crashes_check_config(text):
    check(text)


def test_known_crashers():
    for doc in (
        'ami = "oops"\n',
        "database = 1\n",
        "http = [1, 2]\n",
        '[api]\ntokens = [1, "x"]\n',
        "webhooks = {endpoints = 3}\n",
        "[limits]\nper_number_window = 1e300\n",
        '[limits]\nglobal_window = "1e300d"\n',
        "[limits]\nper_number_window = nan\n",
        '[schedule]\nmax_age = "40000d"\n',
        '[limits]\nglobal_window = "P99999999D"\n',
    ):
        check(doc)
