"""The client dial target: number formats, and a template that cannot carry anything but a channel."""

import pytest

from callbackd.domain.dialtarget import DialTarget, international_prefix
from callbackd.domain.errors import InvalidNumber
from callbackd.domain.phone import E164


@pytest.mark.parametrize(
    "template, region, number, expected",
    [
        ("PJSIP/{e164}@trunk", "US", "+12025550123", "PJSIP/+12025550123@trunk"),
        ("PJSIP/{digits}@trunk", "US", "+12025550123", "PJSIP/12025550123@trunk"),
        ("Local/{national}@from-internal", "US", "+12025550123", "Local/2025550123@from-internal"),
        ("Local/{national}@from-internal", "DE", "+4930123456", "Local/030123456@from-internal"),
        ("Local/{national}@from-internal", "GB", "+442079460123", "Local/02079460123@from-internal"),
        ("Local/{national}@from-internal", "RU", "+74951234567", "Local/84951234567@from-internal"),
        # Abroad, {national} is how the number is dialled from home: the international prefix first.
        ("Local/{national}@from-internal", "US", "+4930123456", "Local/0114930123456@from-internal"),
        ("Local/{national}@from-internal", "DE", "+12025550123", "Local/0012025550123@from-internal"),
        ("SIP/trunk/{international}", "US", "+4930123456", "SIP/trunk/0114930123456"),
        ("IAX2/trunk/{international}", "RU", "+4930123456", "IAX2/trunk/8104930123456"),
    ],
)
def test_formats(template, region, number, expected):
    assert DialTarget(template, region).render(E164(number)) == expected


def test_international_prefixes():
    assert [international_prefix(r) for r in ("US", "DE", "RU", "JP", "BR")] == [
        "011",
        "00",
        "810",
        "010",
        "00",
    ]


@pytest.mark.parametrize(
    "template",
    [
        "PJSIP/{number}@trunk",  # not one of the formats
        "PJSIP/trunk",  # no placeholder
        "PJSIP/{e164}@trunk&PJSIP/{e164}@other",  # two channels
        "PJSIP/{e164}@trunk&PJSIP/x@y",
        "PJSIP/{e164}@trunk,30,D(1)",  # Dial options
        "Local/{national}@${EVIL}",  # a dialplan expression
        "Local/{national}@from-internal)",
        "PJSIP/{e164}@trunk\r\nAction: Command",  # an AMI header
        "PJSIP/{e164} @trunk",
        "{e164}",  # no channel technology
        "PJSIP/{e164}{digits}@trunk",
        "PJSIP/{E164}@trunk",
    ],
)
def test_templates_that_could_carry_more_than_a_channel_are_refused(template):
    with pytest.raises(ValueError):
        DialTarget(template)


def test_only_e164_numbers_are_rendered():
    target = DialTarget("Local/{national}@from-internal")
    for bad in ("2025550123", "+1202555012&PJSIP/x", "+1 202 555 0123"):
        with pytest.raises(InvalidNumber):
            target.render(bad)  # type: ignore[arg-type]


def test_unknown_region_is_refused():
    with pytest.raises(ValueError, match="region"):
        DialTarget("Local/{national}@from-internal", "XX")


def test_config_checks_the_target_at_load_and_the_originate_carries_it():
    from types import SimpleNamespace

    from callbackd.config import Config
    from callbackd.dialer import originate_fields

    cfg = Config.model_validate(
        {"numbers": {"default_region": "DE"}, "dialer": {"client_target": "Local/{national}@from-internal"}}
    )
    assert cfg.dialer.client_region == "DE"
    run = SimpleNamespace(attempt_id="a1", channel_id="cbd-a1", operator="PJSIP/op1", try_no=1)
    fields = originate_fields(cfg.dialer, run, "Ada", E164("+4930123456"), "queue_abandon")
    assert "CBD_DIAL=Local/030123456@from-internal" in fields["Variable"]
    # Without client_target the old dial_pattern still applies.
    fields = originate_fields(Config().dialer, run, "Ada", E164("+4930123456"), "queue_abandon")
    assert "CBD_DIAL=PJSIP/+4930123456@trunk" in fields["Variable"]
    with pytest.raises(ValueError, match="client_target"):
        Config.model_validate({"dialer": {"client_target": "PJSIP/{e164}@trunk&PJSIP/x"}})
