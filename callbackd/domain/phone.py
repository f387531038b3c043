"""Phone numbers as they enter and leave the system.

Every number that reaches a dial string is an :class:`E164`: ``+`` and ASCII digits
only, so nothing a caller or a web form sends can add a channel, an argument or a
dialplan variable to what Asterisk executes.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as pn_timezone

from callbackd.domain.errors import InvalidNumber

__all__ = [
    "E164",
    "NumberRules",
    "caller_id_for",
    "client_zones",
    "is_anonymous",
    "mask",
    "parse_caller_id",
    "sanitize_caller_name",
]

MAX_INPUT_LEN = 32

_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")
# ASCII only on purpose: phonenumbers would happily fold other scripts' digits,
# which hides what the caller really typed.
_ALLOWED_RE = re.compile(r"[0-9 +().\-]*")
_PREFIX_RE = re.compile(r"\+[0-9]{1,15}")

_ANONYMOUS = frozenset(
    {
        "",
        "anonymous",
        "unknown",
        "<unknown>",
        "restricted",
        "private",
        "unavailable",
        "withheld",
        "asterisk",
    }
)


class E164(str):
    """A phone number in E.164 form (``+`` then 7 to 15 digits), checked on every construction.

    Build it with :meth:`parse` for outside input and :meth:`trusted` for values we
    stored ourselves; either way the string can go into a dial string as is.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> E164:
        # Enforced here rather than only in the factories so that no code path
        # (including copy and pickle) can produce an unchecked instance.
        if not isinstance(value, str) or _E164_RE.fullmatch(value) is None:
            raise InvalidNumber(value, "not_e164")
        return super().__new__(cls, value)

    @classmethod
    def trusted(cls, value: str) -> E164:
        """Rebuild a number read back from our own storage; still refuses anything malformed."""
        return cls(value)

    @classmethod
    def parse(cls, raw: str, region: str) -> E164:
        """Parse what a person or a form typed; national formats use ``region`` (ISO 3166, e.g. 'RU').

        A leading ``00`` is read as the international prefix even where the region's
        own prefix differs (``810`` in Russia, ``011`` in the US), because that is how
        people write it in practice.
        """
        return _parse(raw, region, guess_international=False)

    @property
    def digits(self) -> str:
        """The number without ``+``, for trunks that want bare international digits."""
        return self[1:]

    def __repr__(self) -> str:
        return f"E164({str.__repr__(self)})"


def _check_region(region: str) -> str:
    code = region.upper() if isinstance(region, str) else ""
    if code not in phonenumbers.SUPPORTED_REGIONS:
        # A bad region is a configuration mistake, not bad input, so it is not InvalidNumber.
        raise ValueError(f"unknown phone region {region!r}")
    return code


@functools.lru_cache(maxsize=8192)
def _valid_e164(text: str, region: str | None) -> str | None:
    """Cached: a contact centre hears the same numbers again and again, and phonenumbers'
    parse and validation cost more than the rest of storing a call."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return formatted if _E164_RE.fullmatch(formatted) else None


def _parse(raw: str, region: str, *, guess_international: bool) -> E164:
    region = _check_region(region)
    if not isinstance(raw, str):
        raise InvalidNumber(raw, "unparseable")
    if len(raw) > MAX_INPUT_LEN:
        raise InvalidNumber(raw, "too_long")
    text = raw.strip()
    if not text:
        raise InvalidNumber(raw, "empty")
    if _ALLOWED_RE.fullmatch(text) is None:
        raise InvalidNumber(raw, "bad_chars")
    if "+" in text[1:]:
        raise InvalidNumber(raw, "misplaced_plus")
    digits = re.sub(r"[^0-9]", "", text)
    if not digits:
        raise InvalidNumber(raw, "unparseable")

    if text.startswith("+"):
        candidates = ["+" + digits]
    else:
        candidates = [text]
        if digits.startswith("00"):
            candidates.append("+" + digits[2:])
        elif guess_international:
            candidates.append("+" + digits)
    for candidate in candidates:
        found = _valid_e164(candidate, region)
        if found is not None:
            return E164(found)
    raise InvalidNumber(raw, "invalid")


def is_anonymous(raw: str | None) -> bool:
    """True for the placeholders switches and Asterisk use when the caller hid the number."""
    return raw is None or raw.strip().lower() in _ANONYMOUS


def parse_caller_id(raw: str | None, region: str) -> E164 | None:
    """Parse a caller ID from Asterisk; None means there is nobody to call back.

    Unlike :meth:`E164.parse`, bare digits that are not a valid national number are
    retried as international, since trunks often send ``79991234567`` or
    ``12025550123`` without the ``+``.
    """
    if raw is None or is_anonymous(raw):
        return None
    return _parse(raw, region, guess_international=True)


def mask(number: str, keep: int = 4) -> str:
    """Hide most of a number for logs while keeping it recognisable ('+7******4567').

    Works on any string and outputs only ``+``, digits and ``*``, so it is also safe
    for logging rejected input.
    """
    if keep < 0:
        raise ValueError("keep must be >= 0")
    plus = "+" if number.startswith("+") else ""
    digits = re.sub(r"[^0-9]", "", number)
    tail = min(keep, len(digits) // 2)
    head = 1 if len(digits) - tail >= 4 else 0
    hidden = len(digits) - head - tail
    return plus + digits[:head] + "*" * hidden + digits[len(digits) - tail :]


_NAME_PUNCT = frozenset(" .,-'_")


def _name_char_ok(ch: str) -> bool:
    if ch in _NAME_PUNCT:
        return True
    category = unicodedata.category(ch)
    # Letters of any script plus their combining marks (needed for e.g. Devanagari), decimal digits.
    return category[0] in ("L", "M") or category == "Nd"


def sanitize_caller_name(name: str | None, max_len: int = 40) -> str:
    """Make a CallerID name safe to hand to Asterisk.

    Quotes, angle brackets, ``;``, ``&``, ``$``, braces, slashes and control characters
    could break out of a CallerID header or a dialplan expression, so only letters,
    digits, spaces and ``. , - ' _`` survive.
    """
    if not name:
        return ""
    if max_len < 0:
        raise ValueError("max_len must be >= 0")
    kept = "".join(" " if ch.isspace() else ch for ch in name if ch.isspace() or _name_char_ok(ch))
    collapsed = " ".join(kept.split())
    return collapsed[:max_len].rstrip()


def _as_prefixes(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a collection of prefixes, not a single string")
    prefixes = tuple(values)
    for prefix in prefixes:
        if not isinstance(prefix, str) or _PREFIX_RE.fullmatch(prefix) is None:
            raise ValueError(f"{what}: {prefix!r} is not a prefix like '+7900'")
    return prefixes


@dataclass(frozen=True)
class NumberRules:
    """Which numbers we may call back; guards against toll fraud and known nuisance callers.

    ``allowed_prefixes`` empty means every country is allowed.
    """

    blacklist: frozenset[str] = field(default_factory=frozenset)
    blocked_prefixes: tuple[str, ...] = ()
    allowed_prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.blacklist, str):
            raise TypeError("blacklist must be a collection of numbers, not a single string")
        object.__setattr__(self, "blacklist", frozenset(E164.trusted(n) for n in self.blacklist))
        object.__setattr__(self, "blocked_prefixes", _as_prefixes(self.blocked_prefixes, "blocked_prefixes"))
        object.__setattr__(self, "allowed_prefixes", _as_prefixes(self.allowed_prefixes, "allowed_prefixes"))

    def verdict(self, number: E164) -> str | None:
        """None if we may call ``number``, else ``blacklisted``, ``prefix_blocked`` or ``not_allowed``."""
        if number in self.blacklist:
            return "blacklisted"
        if number.startswith(self.blocked_prefixes):
            return "prefix_blocked"
        if self.allowed_prefixes and not number.startswith(self.allowed_prefixes):
            return "not_allowed"
        return None


def _known_zone(name: str) -> bool:
    if not name or len(name) > 64:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def check_zone(name: str) -> str:
    """An IANA zone name as given, or ValueError naming it."""
    if not isinstance(name, str) or not name or not _known_zone(name):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Asia/Vladivostok")
    return name


def client_zones(
    number: E164,
    given: str | None = None,
    refinements: Mapping[str, Sequence[str]] | None = None,
) -> tuple[str, ...]:
    """The IANA zones a client may be in; empty when nothing is known.

    ``given`` (a lead form's zone) wins. Then the longest prefix of ``refinements``
    (configured number ranges, e.g. a mobile operator's Far East block), then the
    ``phonenumbers`` prefix data, which already narrows fixed lines by area code
    (+7 423 is Vladivostok) but lists every zone of the country for most mobiles.
    """
    if given and _known_zone(given):
        return (given,)
    for prefix in sorted(refinements or {}, key=len, reverse=True):
        if number.startswith(prefix):
            return tuple(z for z in (refinements or {})[prefix] if _known_zone(z))
    try:
        parsed = phonenumbers.parse(str(number))
    except phonenumbers.NumberParseException:
        return ()
    return tuple(
        z for z in pn_timezone.time_zones_for_number(parsed) if z != "Etc/Unknown" and _known_zone(z)
    )


def caller_id_for(did: str | None, by_did: Mapping[str, str], fallback: str) -> str:
    """The caller ID the client sees on a callback: the one mapped to the number they dialled.

    Clients ignore unknown numbers; the one they dialled is the one they recognise.
    ``by_did`` maps a DID as Asterisk reports it (``EXTEN`` on the inbound context) to a
    caller ID such as ``"Support" <+12025550100>``; an unmapped or unknown DID gets ``fallback``.
    """
    key = (did or "").strip()
    return by_did.get(key, fallback) if key else fallback
