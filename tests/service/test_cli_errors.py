"""Every command against a broken database path, an unmigrated database, a locked one, an output it
cannot write and bad choices: one line on stderr, the documented exit code, no traceback, no file or
directory created."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from callbackd import cli

ROOT = Path(__file__).resolve().parents[2]

# Every command that opens the database, with arguments that pass the parser.
DB_COMMANDS = [
    ["requests", "list"],
    ["requests", "list", "--json"],
    ["requests", "show", "1"],
    ["requests", "add", "+12025550123"],
    ["requests", "at", "1", "2030-01-02 10:00"],
    ["requests", "cancel", "1"],
    ["requests", "retry", "1"],
    ["privacy", "export", "+12025550123"],
    ["privacy", "erase", "+12025550123"],
    ["privacy", "anonymise"],
    ["report", "--from", "2026-01-01"],
    ["report", "--from", "2026-01-01", "--recovery"],
    ["export", "calls", "--from", "2026-01-01"],
    ["simulate", "--from", "2026-01-01", "--runs", "1"],
    ["webhooks", "list"],
    ["webhooks", "retry", "--dead"],
]
WRITERS = {"add", "at", "cancel", "retry", "erase", "anonymise"}


def write_config(tmp_path: Path, db: Path) -> Path:
    path = tmp_path / "callbackd.toml"
    path.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{db}"\n'
        f'[service]\nstatus_file = "{tmp_path}/status.json"\nspool_file = "{tmp_path}/spool.jsonl"\n'
        '[reports]\ntimezone = "Europe/Moscow"\n'
    )
    path.chmod(0o600)
    return path


def run(capsys, config: Path, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--config", str(config), "--lock-timeout", "0.3", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def tree(path: Path) -> set[Path]:
    return set(path.rglob("*"))


@pytest.mark.parametrize("args", DB_COMMANDS, ids=" ".join)
def test_a_database_path_that_does_not_exist(tmp_path, capsys, args):
    db = tmp_path / "typo" / "cb.db"
    config = write_config(tmp_path, db)
    before = tree(tmp_path)
    code, _out, err = run(capsys, config, *args)
    assert code == cli.EXIT_DATABASE, err
    assert (
        one_line(err)
        == f"callbackd: error: database: no database at {db} (create it with: callbackd db upgrade)"
    )
    assert tree(tmp_path) == before  # neither the file nor its directory


@pytest.mark.parametrize("args", DB_COMMANDS, ids=" ".join)
def test_an_unmigrated_database(tmp_path, capsys, args):
    db = tmp_path / "cb.db"
    sqlite3.connect(db).close()  # an empty file, as an old version's CLI left behind
    config = write_config(tmp_path, db)
    code, _out, err = run(capsys, config, *args)
    assert code == cli.EXIT_DATABASE, err
    assert (
        one_line(err)
        == "callbackd: error: database: the database is not migrated (run: callbackd db upgrade)"
    )
    tables = sqlite3.connect(db).execute("select name from sqlite_master").fetchall()
    assert tables == []  # nothing was created in it either


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("migrated")
    config = write_config(tmp, tmp / "cb.db")
    res = subprocess.run(
        [sys.executable, "-m", "callbackd", "--config", str(config), "db", "upgrade"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    res = subprocess.run(  # request 1, for show, at, cancel and retry
        [sys.executable, "-m", "callbackd", "--config", str(config), "requests", "add", "+12025550188"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    return tmp / "cb.db"


@pytest.mark.parametrize("args", DB_COMMANDS, ids=" ".join)
def test_a_locked_database(tmp_path, capsys, migrated, args):
    db = tmp_path / "cb.db"
    db.write_bytes(migrated.read_bytes())
    config = write_config(tmp_path, db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, out, err = run(capsys, config, *args)
    finally:
        holder.rollback()
        holder.close()
    if args[1] in WRITERS or args[0] == "privacy" or args[:2] == ["webhooks", "retry"]:
        # Anything that writes (or may) waits --lock-timeout, then gives up with one line.
        assert code == cli.EXIT_DATABASE, (code, out, err)
        line = one_line(err)
        assert line.startswith(
            "callbackd: error: database: database is locked (another process holds it; "
        ), line
    else:
        # Readers take a WAL snapshot: the lock does not stop them.
        assert code == 0, err
        assert "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["report", "--from", "2026-01-01", "--format", "csv"],
        ["export", "calls", "--from", "2026-01-01"],
        ["simulate", "--from", "2026-01-01", "--runs", "1"],
        ["privacy", "export", "+12025550123"],
    ],
    ids=" ".join,
)
@pytest.mark.parametrize("where", ["missing_dir", "a_directory", "unwritable_dir"])
def test_an_output_that_cannot_be_written(tmp_path, capsys, migrated, args, where):
    db = tmp_path / "cb.db"
    db.write_bytes(migrated.read_bytes())
    config = write_config(tmp_path, db)
    if where == "missing_dir":
        target = tmp_path / "typo" / "x.csv"
    elif where == "a_directory":
        target = tmp_path / "adir"
        target.mkdir()
    else:  # refused even to root: no file can be made in /proc
        target = Path("/proc/callbackd-test.csv")
    before = tree(tmp_path)
    code, _out, err = run(capsys, config, *args, "--output", str(target))
    assert code == cli.EXIT_FILE, err
    assert one_line(err).startswith(f"callbackd: error: cannot write {target}: ")
    assert tree(tmp_path) == before
    assert where != "unwritable_dir" or not target.exists()


def test_typo_output_directory_is_never_created(tmp_path, migrated):
    """The issue's case, as an admin types it: `--output /typo/x.csv`."""
    db = tmp_path / "cb.db"
    db.write_bytes(migrated.read_bytes())
    config = write_config(tmp_path, db)
    typo = Path("/typo-callbackd-test")
    assert not typo.exists()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "callbackd",
            "--config",
            str(config),
            "export",
            "calls",
            "--from",
            "2026-01-01",
            "--output",
            f"{typo}/x.csv",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 5, res.stderr
    assert (
        res.stderr
        == f"callbackd: error: cannot write {typo}/x.csv: no directory {typo} (it is not created for you)\n"
    )
    assert not typo.exists()


@pytest.mark.parametrize(
    ("args", "choices"),
    [
        (
            ["requests", "list", "--status", "bogus"],
            "open, dialling, reached, recovered, failed, expired, cancelled",
        ),
        (["report", "--from", "2026-01-01", "--by", "week"], "day, hour, queue, operator, source"),
        (["export", "bogus", "--from", "2026-01-01"], "calls, requests, attempts"),
        (["webhooks", "list", "--status", "x"], "pending, delivered, dead"),
        (["completion", "fish"], "bash, zsh, tcsh"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_bad_choices_exit_2_with_the_valid_ones(tmp_path, args, choices):
    config = write_config(tmp_path, tmp_path / "cb.db")
    before = tree(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "callbackd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    # Python 3.12 quotes each choice, earlier versions do not.
    assert res.stderr.splitlines()[-1].replace("'", "").endswith(f"(choose from {choices})"), res.stderr
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "args",
    [
        ["requests", "list", "--limit", "0"],
        ["report", "--from", "yesterday"],
        ["report", "--from", "2026-02-01", "--to", "2026-01-01"],
        ["requests", "at", "1", "tomorrow at ten"],
        ["webhooks", "retry"],
        ["simulate", "--from", "2026-01-01", "--breaks", "lunch"],
        ["simulate", "--from", "2026-01-01", "--breaks", "12:00-25:00"],
    ],
    ids=" ".join,
)
def test_bad_values_exit_2_in_one_line(tmp_path, capsys, migrated, args):
    db = tmp_path / "cb.db"
    db.write_bytes(migrated.read_bytes())
    config = write_config(tmp_path, db)
    try:
        code, _out, err = run(capsys, config, *args)
    except SystemExit as exc:  # argparse's own check
        code, err = exc.code, capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("callbackd")


def test_a_database_server_that_does_not_answer(tmp_path, capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    config = tmp_path / "callbackd.toml"
    config.write_text(f'[database]\nurl = "postgresql+asyncpg://callbackd@127.0.0.1:{port}/callbackd"\n')
    config.chmod(0o600)
    code, _out, err = run(capsys, config, "requests", "list")
    assert code == cli.EXIT_DATABASE, err
    assert one_line(err).startswith("callbackd: error: database: ")


def test_every_command_in_a_subprocess_prints_no_traceback(tmp_path):
    """The same as a user sees it: the unmigrated case for every command, through `python -m callbackd`."""
    db = tmp_path / "cb.db"
    sqlite3.connect(db).close()
    config = write_config(tmp_path, db)
    for args in DB_COMMANDS:
        res = subprocess.run(
            [sys.executable, "-m", "callbackd", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert res.returncode == 4, (args, res.stderr)
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, (args, res.stderr)
