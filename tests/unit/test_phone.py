import copy
import pickle

import pytest

from callbackd.domain.errors import DomainError, InvalidNumber
from callbackd.domain.phone import (
    E164,
    NumberRules,
    is_anonymous,
    mask,
    parse_caller_id,
    sanitize_caller_name,
)


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("89991234567", "RU", "+79991234567"),
        ("8 (999) 123-45-67", "RU", "+79991234567"),
        ("+7 999 123 45 67", "RU", "+79991234567"),
        ("0079991234567", "RU", "+79991234567"),
        ("(202) 555-0123", "US", "+12025550123"),
        ("202.555.0123", "US", "+12025550123"),
        ("+1 202 555 0123", "DE", "+12025550123"),
        ("011 7 999 123 4567", "US", "+79991234567"),
        ("030 1234567", "DE", "+49301234567"),
        ("0049 30 1234567", "DE", "+49301234567"),
        ("020 7946 0018", "GB", "+442079460018"),
        ("98765 43210", "IN", "+919876543210"),
        ("  +919876543210  ", "in", "+919876543210"),
    ],
)
def test_parse_valid(raw: str, region: str, expected: str) -> None:
    number = E164.parse(raw, region)
    assert number == expected
    assert isinstance(number, E164)
    assert number.digits == expected[1:]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("+1555&PJSIP/evil", "bad_chars"),
        ("${SHELL}", "bad_chars"),
        ("123,456", "bad_chars"),
        ("PJSIP/100", "bad_chars"),
        ("1/2", "bad_chars"),
        ("\x00", "bad_chars"),
        ("8999123\x004567", "bad_chars"),
        ("89991234567;evil", "bad_chars"),
        ("89991234567\nAction: Originate", "bad_chars"),
        ("+7999123456 7 ext 1", "bad_chars"),
        ("٨٩٩٩١٢٣٤٥٦٧", "bad_chars"),  # Arabic-Indic digits
        ("８９９９１２３４５６７", "bad_chars"),  # full-width digits
        ("7+9991234567", "misplaced_plus"),
        ("++79991234567", "misplaced_plus"),
        ("()-.", "unparseable"),
        ("1" * 33, "too_long"),
        ("9" * 10_000, "too_long"),
        ("12345", "invalid"),
        ("89991234", "invalid"),
        ("+999 1234567", "invalid"),
    ],
)
def test_parse_refuses(raw: str, reason: str) -> None:
    with pytest.raises(InvalidNumber) as info:
        E164.parse(raw, "RU")
    assert info.value.reason == reason
    assert isinstance(info.value, DomainError)


def test_parse_does_not_guess_international_for_typed_numbers() -> None:
    # A web form in Russia typing a US number without '+' is a mistake, not a US call.
    with pytest.raises(InvalidNumber):
        E164.parse("12025550123", "RU")


def test_unknown_region_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="region"):
        E164.parse("89991234567", "XX")


def test_error_message_is_escaped_and_bounded() -> None:
    with pytest.raises(InvalidNumber) as info:
        E164.parse("\n" + "x" * 100, "RU")
    message = str(info.value)
    assert "\n" not in message
    assert "\\n" in message
    assert "x" * 40 not in message
    assert message.endswith("too_long")


@pytest.mark.parametrize("value", ["+79991234567", "+12025550123", "+4930123456"])
def test_trusted_accepts_stored_values(value: str) -> None:
    assert E164.trusted(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "79991234567",
        "+0123456789",
        "+123",
        "+1234567890123456",
        "+7999 123",
        "+7999123456\n",
        "",
        "+7٩٩٩١٢٣٤٥٦٧",
    ],
)
def test_trusted_refuses_malformed(value: str) -> None:
    with pytest.raises(InvalidNumber) as info:
        E164.trusted(value)
    assert info.value.reason == "not_e164"


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(InvalidNumber):
        E164("+1555&PJSIP/evil")


def test_e164_survives_copy_and_pickle() -> None:
    number = E164.trusted("+79991234567")
    assert copy.copy(number) == number
    restored = pickle.loads(pickle.dumps(number))
    assert restored == number
    assert isinstance(restored, E164)
    assert repr(number) == "E164('+79991234567')"


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "  ",
        "anonymous",
        "Anonymous",
        "ANONYMOUS",
        "unknown",
        "<unknown>",
        "Restricted",
        "private",
        "unavailable",
        "asterisk",
        "withheld",
    ],
)
def test_anonymous_caller_ids(raw: str | None) -> None:
    assert is_anonymous(raw)
    assert parse_caller_id(raw, "RU") is None


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("79991234567", "RU", "+79991234567"),
        ("89991234567", "RU", "+79991234567"),
        ("+79991234567", "RU", "+79991234567"),
        ("12025550123", "RU", "+12025550123"),  # international without '+'
        ("79991234567", "US", "+79991234567"),
        ("2025550123", "US", "+12025550123"),
        ("49301234567", "RU", "+49301234567"),
        ("4951234567", "RU", "+74951234567"),  # valid nationally: national reading wins
    ],
)
def test_parse_caller_id(raw: str, region: str, expected: str) -> None:
    assert parse_caller_id(raw, region) == expected


@pytest.mark.parametrize("raw", ["100", "PJSIP/100", "anonymous;evil", "+1555&PJSIP/evil", "5"])
def test_parse_caller_id_refuses_garbage(raw: str) -> None:
    assert not is_anonymous(raw)
    with pytest.raises(InvalidNumber):
        parse_caller_id(raw, "RU")


@pytest.mark.parametrize(
    ("number", "keep", "expected"),
    [
        ("+79991234567", 4, "+7******4567"),
        ("+12025550123", 2, "+1********23"),
        ("+12025550123", 0, "+1**********"),
        ("1234", 4, "**34"),
        ("", 4, ""),
        ("+1555&PJSIP/evil\n", 4, "+**55"),
    ],
)
def test_mask(number: str, keep: int, expected: str) -> None:
    assert mask(number, keep) == expected


def test_mask_rejects_negative_keep() -> None:
    with pytest.raises(ValueError):
        mask("+79991234567", -1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, ""),
        ("", ""),
        ("John Smith", "John Smith"),
        ("Иван Петров", "Иван Петров"),
        ("李小龙", "李小龙"),
        ("देवनागरी", "देवनागरी"),
        ("O'Brien, Jr. - A_B", "O'Brien, Jr. - A_B"),
        ('Eve" <+1666>', "Eve 1666"),
        ("x;Set(CALLERID(num)=666)", "xSetCALLERIDnum666"),
        ("${SHELL} & $[1+1]", "SHELL 11"),
        ("{a}/b\\c|d", "abcd"),
        ("line1\r\nAction: Hangup\x00", "line1 Action Hangup"),
        ("  lots    of\tspace  ", "lots of space"),
        ("\u202eevil\u200b", "evil"),
    ],
)
def test_sanitize_caller_name(name: str | None, expected: str) -> None:
    assert sanitize_caller_name(name) == expected


def test_sanitize_caller_name_truncates_without_trailing_space() -> None:
    assert sanitize_caller_name("a" * 100) == "a" * 40
    assert sanitize_caller_name("abc def", max_len=4) == "abc"


def test_number_rules() -> None:
    rules = NumberRules(
        blacklist=frozenset({"+79991234567"}),
        blocked_prefixes=("+1900", "+7809"),
        allowed_prefixes=("+7", "+1"),
    )
    assert rules.verdict(E164.trusted("+79991234567")) == "blacklisted"
    assert rules.verdict(E164.trusted("+19005550123")) == "prefix_blocked"
    assert rules.verdict(E164.trusted("+78091234567")) == "prefix_blocked"
    assert rules.verdict(E164.trusted("+4930123456")) == "not_allowed"
    assert rules.verdict(E164.trusted("+79991234568")) is None
    assert rules.verdict(E164.trusted("+12025550123")) is None


def test_number_rules_default_allows_everything_and_accepts_lists() -> None:
    assert NumberRules().verdict(E164.trusted("+4930123456")) is None
    rules = NumberRules(blacklist=["+4930123456"], blocked_prefixes=["+49"])  # type: ignore[arg-type]
    assert rules.blacklist == frozenset({"+4930123456"})
    assert rules.blocked_prefixes == ("+49",)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"blocked_prefixes": ("7900",)},
        {"allowed_prefixes": ("+7a",)},
        {"allowed_prefixes": "+7"},
        {"blacklist": frozenset({"89991234567"})},
    ],
)
def test_number_rules_refuse_bad_config(kwargs: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError, DomainError)):
        NumberRules(**kwargs)  # type: ignore[arg-type]
