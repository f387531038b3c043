"""The [http] and [mqtt] sections: refused without a token, secrets kept private, shipped file valid."""

from __future__ import annotations

import re
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from callbackd import config as config_mod
from callbackd.config import HTTP_TOKEN_ENV, Config, ConfigError, MqttConfig

SHIPPED = Path(__file__).parents[2] / "config" / "callbackd.toml"
TOKEN = "0123456789abcdef0123"


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "callbackd.toml"
    p.write_text(text)
    p.chmod(mode)
    return p


def test_defaults_are_off():
    cfg = Config()
    assert not cfg.http.enabled and not cfg.mqtt.enabled
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 8380)
    assert (cfg.mqtt.port, cfg.mqtt.topic, cfg.mqtt.reply_topic, cfg.mqtt.qos) == (
        1883,
        "callbackd/leads",
        "callbackd/leads/reply",
        1,
    )
    assert cfg.mqtt.reconnect_max.total_seconds() == 60


def test_http_enabled_without_a_token_is_refused_when_the_token_is_needed(tmp_path, monkeypatch):
    """Loading succeeds (admin commands need no token); run and check-config ask for it."""
    monkeypatch.delenv(HTTP_TOKEN_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = config_mod.load(write(tmp_path, "[http]\nenabled = true\n"))
    with pytest.raises(ConfigError, match=r"http.token: no token"):
        cfg.http_token()
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http_token").write_text("from-a-credential-0123456789\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert cfg.http_token() == "from-a-credential-0123456789"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    monkeypatch.setenv(HTTP_TOKEN_ENV, TOKEN)
    assert config_mod.load(write(tmp_path, "[http]\nenabled = true\n")).http_token() == TOKEN


def test_token_sources_in_order(tmp_path, monkeypatch):
    monkeypatch.delenv(HTTP_TOKEN_ENV, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file-0123456789\n")
    cfg = Config.model_validate({"http": {"enabled": True, "token": TOKEN, "token_file": str(token_file)}})
    assert cfg.http_token() == "from-the-file-0123456789"
    monkeypatch.setenv(HTTP_TOKEN_ENV, "from-the-environment-0123")
    assert cfg.http_token() == "from-the-environment-0123"
    monkeypatch.setenv(HTTP_TOKEN_ENV, "short")
    with pytest.raises(ConfigError, match="too short"):
        cfg.http_token()


def test_short_token_in_the_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"http\.token: use at least 16"):
        config_mod.load(write(tmp_path, '[http]\ntoken = "abc"\n'))


@pytest.mark.parametrize("section", ['[http]\ntoken = "' + TOKEN + '"\n', '[mqtt]\npassword = "pw"\n'])
def test_a_secret_in_a_world_readable_file_is_refused(tmp_path, section):
    with pytest.raises(ConfigError, match="readable by others"):
        config_mod.load(write(tmp_path, section, 0o644))
    assert config_mod.load(write(tmp_path, section, 0o640))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("topic", ""),
        ("topic", "a/#/b"),
        ("topic", "a/b+"),
        ("reply_topic", "a/+"),
        ("qos", 2),
        ("response_prefix", "a/#"),
        ("session_expiry", "0s"),
    ],
)
def test_bad_mqtt_settings_are_refused(tmp_path, key, value):
    line = f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}"
    with pytest.raises(ConfigError, match=rf"mqtt\.{key}"):
        config_mod.load(write(tmp_path, f"[mqtt]\n{line}\n".replace("'", '"')))


def test_shipped_sections_are_valid_when_uncommented(monkeypatch):
    monkeypatch.setenv(HTTP_TOKEN_ENV, TOKEN)
    head, tail = SHIPPED.read_text().split("# [http]", 1)
    tail = re.sub(r"^# (\[mqtt\]|[a-z_]+ = .*)$", r"\1", "# [http]" + tail, flags=re.M)
    data = tomllib.loads(head + tail.replace("# [http]", "[http]", 1))
    cfg = Config.model_validate(data)
    assert cfg.http.enabled and cfg.mqtt.enabled and cfg.mqtt.password is not None


def test_response_topics_are_honoured_only_under_the_prefix():
    default = MqttConfig(reply_topic="site/replies")
    assert default.allows_response_topic("site/replies")
    assert default.allows_response_topic("site/replies/browser-7")
    assert not default.allows_response_topic("site/replies-evil")
    assert not default.allows_response_topic("$SYS/broker")
    own = MqttConfig(reply_topic="", response_prefix="web/out/")
    assert own.allows_response_topic("web/out/x") and not own.allows_response_topic("site/replies/x")
    assert not MqttConfig(response_prefix="").allows_response_topic("callbackd/leads/reply")


def test_the_mqtt_client_id_is_fixed_per_node():
    assert Config(node="pbx1").mqtt_client_id() == "callbackd-pbx1"
    assert Config(node="pbx1", mqtt=MqttConfig(client_id="leads-a")).mqtt_client_id() == "leads-a"
    assert MqttConfig().session_expiry == timedelta(days=1) and MqttConfig().qos == 1
