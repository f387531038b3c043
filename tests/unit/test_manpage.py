"""man/callbackd.8 names every command and every option of the CLI: the lists come from the
argparse parser itself, so a command or option added later fails here until the page has it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from callbackd.cli import build_parser

MAN = Path(__file__).resolve().parents[2] / "man" / "callbackd.8"


def _text() -> str:
    """The page's words with roff escapes undone (\\- is a dash, font switches vanish)."""
    raw = MAN.read_text()
    raw = re.sub(r"\\f[BIRP]", "", raw)
    return raw.replace("\\-", "-").replace('"', "")


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += _commands(sub, (*prefix, name))
    return found


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings]


def test_the_lists_come_from_the_parser() -> None:
    commands = _commands(build_parser())
    assert ("run",) in commands and ("db", "upgrade") in commands
    assert "--config" in _options(build_parser())


def test_every_command_is_in_the_man_page() -> None:
    text = " ".join(_text().split())
    # Nested ones by their full name ("requests list"), which also covers the group ("requests").
    missing = [" ".join(c) for c in _commands(build_parser()) if " ".join(c) not in text]
    assert missing == [], f"commands missing from {MAN.name}: {missing}"


def test_every_top_level_option_is_in_the_man_page() -> None:
    words = set(re.findall(r"--?[a-z][a-z-]*", _text()))
    missing = [o for o in _options(build_parser()) if o not in words]
    assert missing == [], f"options missing from {MAN.name}: {missing}"


def test_every_command_option_is_in_the_man_page() -> None:
    words = set(re.findall(r"--?[a-z][a-z-]*", _text()))
    parser = build_parser()
    missing = []
    for command in _commands(parser):
        sub = parser
        for name in command:
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        missing += [f"{' '.join(command)} {o}" for o in _options(sub) if o not in words]
    assert missing == [], f"options missing from {MAN.name}: {missing}"
