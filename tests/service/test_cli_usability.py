"""The CLI as an operator meets it: --version, --config before or after the command, help on every
option, shell completion, UTF-8 JSON, one display zone, no token asked where none is needed, and the
secret checks of check-config."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest
from daemonkit import run_callbackd

from callbackd import cli

ROOT = Path(__file__).resolve().parents[2]


def callbackd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # An ASCII locale: the output must be UTF-8 whatever the terminal says.
    return run_callbackd(*args, env={"LC_ALL": "C", "PYTHONIOENCODING": "ascii", **(env or {})})


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("usable")
    path = tmp / "callbackd.toml"
    path.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp}/cb.db"\n'
        f'[service]\nstatus_file = "{tmp}/status.json"\nspool_file = "{tmp}/spool.jsonl"\n'
        '[schedule]\ntimezone = "Europe/Moscow"\n[schedule.hours]\n"mon-sun" = "00:00-24:00"\n'
        "[schedule.client]\nenabled = false\n"
        '[reports]\ntimezone = "Asia/Vladivostok"\n'
        # The API on, its token only in the service's environment: admin commands must not need it.
        "[http]\nenabled = true\n"
    )
    path.chmod(0o600)
    assert callbackd("--config", str(path), "db", "upgrade").returncode == 0
    return path


def test_version():
    res = callbackd("--version")
    assert res.returncode == 0
    assert res.stdout.startswith("callbackd ") and res.stdout.split()[1][0].isdigit(), res.stdout


def test_config_before_or_after_the_command(config):
    before = callbackd("--config", str(config), "requests", "list", "--json")
    after = callbackd("requests", "list", "--json", "--config", str(config))
    middle = callbackd("requests", "-c", str(config), "list", "--json")
    assert before.returncode == after.returncode == middle.returncode == 0, after.stderr + middle.stderr
    assert before.stdout == after.stdout == middle.stdout


def test_every_option_and_command_has_help():
    parser = cli.build_parser()
    missing = []
    for path, p in [("", parser), *cli.subparsers(parser)]:
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not choice.help:
                        missing.append(f"{path} {choice.dest}".strip())
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path or 'callbackd'} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_help_lists_the_exit_codes():
    res = callbackd("--help")
    assert res.returncode == 0
    for code, text in cli.EXIT_CODES.items():
        assert f"  {code}  {text}" in res.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion(shell):
    res = callbackd("completion", shell)
    assert res.returncode == 0, res.stderr
    for word in ("requests", "check-config", "--lock-timeout", "webhooks"):
        assert word in res.stdout
    if shell == "bash":
        # The script is valid bash and registers the completion.
        check = subprocess.run(["bash", "-n"], input=res.stdout, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        assert "complete " in res.stdout


def test_json_is_utf8_and_times_are_in_the_report_zone(config):
    add = callbackd("--config", str(config), "requests", "add", "+12025550177", "--name", "Иван Петров")
    assert add.returncode == 0, add.stderr
    [line] = [x for x in add.stdout.splitlines() if x.startswith("request ")]  # not a log line
    request_id = line.split()[1]
    listed = callbackd("--config", str(config), "requests", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "Иван Петров" in listed.stdout and "\\u0418" not in listed.stdout
    [row] = [r for r in json.loads(listed.stdout) if r["id"] == int(request_id)]
    # Vladivostok is UTC+10 all year: every time shown carries that offset.
    assert row["created_at"].endswith("+10:00") and row["due_at"].endswith("+10:00"), row
    shown = callbackd("--config", str(config), "requests", "show", request_id)
    assert shown.returncode == 0, shown.stderr
    assert "Иван Петров" in shown.stdout
    assert json.loads(shown.stdout)["contacts_detail"][0]["at"].endswith("+10:00")
    table = callbackd("--config", str(config), "requests", "list")
    assert "+10:00" in table.stdout
    status = callbackd("--config", str(config), "status", "--json")
    assert json.loads(status.stdout)["checked_at"].endswith("+10:00")


def test_admin_commands_do_not_ask_for_the_http_token(config):
    for args in (["requests", "list"], ["webhooks", "list"], ["report", "--from", "2026-01-01"]):
        res = callbackd("--config", str(config), *args)
        assert res.returncode == 0, (args, res.stderr)
    # The daemon and check-config still do.
    res = callbackd("--config", str(config), "check-config", env={"CALLBACKD_AMI_SECRET": "x"})
    assert res.returncode == 3 and "http.token: no token" in res.stderr
    ok = callbackd(
        "--config",
        str(config),
        "check-config",
        env={"CALLBACKD_AMI_SECRET": "x", "CALLBACKD_HTTP_TOKEN": "t" * 20},
    )
    assert ok.returncode == 0, ok.stderr


def test_a_secret_file_readable_by_others_is_refused(tmp_path):
    secret = tmp_path / "ami_secret"
    secret.write_text("s3cret-ami\n")
    secret.chmod(0o644)
    config = tmp_path / "callbackd.toml"
    config.write_text(
        f'[ami]\nsecret_file = "{secret}"\n[database]\nurl = "sqlite+aiosqlite:///{tmp_path}/cb.db"\n'
    )
    config.chmod(0o644)  # no secret inside: fine by itself
    res = callbackd("--config", str(config), "check-config")
    assert res.returncode == 3
    assert res.stderr == (
        f"{config}: ami.secret_file {secret} holds a secret but is readable by others (mode 644); "
        f"run: chmod o-rwx {secret}\n"
    )
    assert "s3cret" not in res.stdout + res.stderr
    secret.chmod(0o640)  # group callbackd may read it
    res = callbackd("--config", str(config), "check-config")
    assert res.returncode == 0, res.stderr


def test_a_password_in_the_database_url_is_a_secret(tmp_path):
    config = tmp_path / "callbackd.toml"
    config.write_text('[database]\nurl = "postgresql+asyncpg://cb:pa55word@127.0.0.1/cb"\n')
    config.chmod(0o644)
    res = callbackd("--config", str(config), "check-config", env={"CALLBACKD_AMI_SECRET": "x"})
    assert res.returncode == 3
    assert "holds a secret but is readable by others (mode 644)" in res.stderr
    assert "pa55word" not in res.stderr
    config.chmod(0o640)
    res = callbackd("--config", str(config), "check-config", env={"CALLBACKD_AMI_SECRET": "x"})
    assert res.returncode == 0, res.stderr
    assert "warning: database.url holds a password" in res.stderr and "pa55word" not in res.stderr
