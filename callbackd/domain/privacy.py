"""Retention and data-subject rules: which rows may still name a client, and how they stop naming one.

A number is anonymised everywhere at once, with one random token per number, so
every report join (a lost call reached later by a call or a callback to the same
number) gives the same figures before and after. The token is random, not a hash:
a hash of a phone number is reversed by trying every number.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from callbackd.domain.phone import E164

__all__ = ["ANON_PREFIX", "cutoff", "is_pseudonym", "number_forms", "pseudonym", "scrub_lines"]

ANON_PREFIX = "anon-"
_SEPARATORS = re.compile(r"[ ()\-.]")


def pseudonym() -> str:
    """A fresh token that fits every number column (String(20)) and can never be dialled."""
    return ANON_PREFIX + secrets.token_hex(6)


def is_pseudonym(value: str | None) -> bool:
    return bool(value) and str(value).startswith(ANON_PREFIX)


def number_forms(number: E164) -> tuple[str, ...]:
    """How the number may appear in raw fields and files: E.164, bare international digits,
    and the national significant number (what a trunk sends without a prefix)."""
    import phonenumbers

    forms = [str(number), number.digits]
    try:
        parsed = phonenumbers.parse(str(number))
        national = phonenumbers.national_significant_number(parsed)
    except phonenumbers.NumberParseException:
        national = ""
    if len(national) >= 6:
        forms.append(national)
    return tuple(dict.fromkeys(forms))


def cutoff(now: datetime, period: timedelta | None) -> datetime | None:
    """Rows older than this may no longer name anyone; None keeps them named (no period set)."""
    return None if period is None else now - period


def scrub_lines(lines: Iterable[str], number: E164) -> tuple[list[str], int]:
    """Lines of an export or spool file without those that hold the number; returns (kept, removed).

    Digits are compared with separators removed, so '+7 (423) 212-34-56' in a free-text
    column matches too; a longer number that merely contains it does not.
    """
    patterns = [re.compile(rf"(?<![0-9]){re.escape(f)}(?![0-9])") for f in number_forms(number)]
    kept: list[str] = []
    removed = 0
    for line in lines:
        squeezed = _SEPARATORS.sub("", line)
        if any(p.search(line) or p.search(squeezed) for p in patterns):
            removed += 1
        else:
            kept.append(line)
    return kept, removed
