"""Where the client leg of a callback is dialled: a template checked once, filled with digits only.

Dialling the client through the PBX's own routing (``Local/{national}@from-internal`` on
FreePBX) lets its outbound routes apply: route caller ID, trunk fail-over, dial-pattern
rewriting and call recording. Plain Asterisk dials a trunk straight
(``PJSIP/{e164}@trunk``).

The template may hold exactly one placeholder and otherwise only the characters a channel
name needs, so no ``&`` (a second channel), ``,`` (Dial options), ``$`` or ``(`` (dialplan
expressions) or white space can get in; the number itself is an :class:`E164`, so what
replaces the placeholder is ``+`` and digits at most.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers

from callbackd.domain.phone import E164

FORMATS = ("e164", "national", "digits", "international")
_PLACEHOLDER = re.compile(r"\{([a-z0-9_]*)\}")
_LITERAL = re.compile(r"[A-Za-z0-9_./@:+\-]*")
_DEFAULT_IDD = "00"


def international_prefix(region: str) -> str:
    """The digits dialled before a country code from ``region``: 011 (US), 00 (DE), 810 (RU)."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region.upper())
    if meta is None:
        raise ValueError(f"unknown phone region {region!r}")
    for prefix in (meta.preferred_international_prefix, meta.international_prefix):
        digits = (prefix or "").replace("~", "")
        if digits.isdigit():
            return digits
    return _DEFAULT_IDD  # a pattern with carrier codes (BR, AU): the common 00


def render_number(number: E164, fmt: str, region: str) -> str:
    """One of FORMATS, digits only (``+`` and digits for e164)."""
    number = E164.trusted(number)
    if fmt == "e164":
        return str(number)
    if fmt == "digits":
        return number.digits
    if fmt == "international":
        return international_prefix(region) + number.digits
    if fmt == "national":
        parsed = phonenumbers.parse(number)
        if parsed.country_code != phonenumbers.country_code_for_region(region.upper()):
            return international_prefix(region) + number.digits
        national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
        return re.sub(r"\D", "", national)
    raise ValueError(f"unknown number format {fmt!r}")


@dataclass(frozen=True)
class DialTarget:
    """A checked client dial template, e.g. ``Local/{national}@from-internal``.

    ``region`` is the home country (``numbers.default_region``): ``{national}`` is the number
    as dialled from there (national format at home, the international prefix abroad) and
    ``{international}`` always starts with that country's international prefix.
    """

    template: str
    region: str = "US"

    def __post_init__(self) -> None:
        found = _PLACEHOLDER.findall(self.template)
        if len(found) != 1 or found[0] not in FORMATS:
            names = " ".join(f"{{{f}}}" for f in FORMATS)
            raise ValueError(f"must hold exactly one of {names}, e.g. PJSIP/{{e164}}@trunk")
        rest = _PLACEHOLDER.sub("", self.template)
        if not _LITERAL.fullmatch(rest) or "/" not in rest:
            raise ValueError(
                "must be a channel such as Local/{national}@from-internal: only letters, digits and "
                "_ . / @ : + - around the placeholder"
            )
        if self.region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {self.region!r}")

    @property
    def format(self) -> str:
        return _PLACEHOLDER.search(self.template).group(1)  # type: ignore[union-attr]

    def render(self, number: E164) -> str:
        digits = render_number(number, self.format, self.region)
        return _PLACEHOLDER.sub(lambda _m: digits, self.template)
