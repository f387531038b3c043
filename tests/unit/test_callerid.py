"""The caller ID a callback presents: the number the client dialled, else the global one."""

import pytest
from pydantic import ValidationError

from callbackd.config import DialerConfig
from callbackd.dialer import originate_fields
from callbackd.domain.phone import E164, caller_id_for

BY_DID = {"100": '"Support" <+12025550100>', "+74232000000": "+74232000000"}
GLOBAL = '"Company" <+12025550199>'


@pytest.mark.parametrize(
    ("did", "expected"),
    [
        ("100", '"Support" <+12025550100>'),
        (" 100 ", '"Support" <+12025550100>'),
        ("+74232000000", "+74232000000"),
        ("101", GLOBAL),  # not mapped
        ("", GLOBAL),
        (None, GLOBAL),  # a web lead: no DID
    ],
)
def test_caller_id_for_did(did: str | None, expected: str) -> None:
    assert caller_id_for(did, BY_DID, GLOBAL) == expected


class Run:
    attempt_id = "a1"
    channel_id = "cbd-a1"
    operator = "PJSIP/op1"
    try_no = 1


def test_originate_sets_the_client_legs_caller_id_from_the_did() -> None:
    cfg = DialerConfig(outbound_callerid=GLOBAL, callerid_by_did=BY_DID)
    fields = originate_fields(cfg, Run(), "Ada", E164("+12025550123"), "queue_abandon", did="100")
    assert 'CBD_OUTCID="Support" <+12025550100>' in fields["Variable"]
    fields = originate_fields(cfg, Run(), "Ada", E164("+12025550123"), "web_form")
    assert f"CBD_OUTCID={GLOBAL}" in fields["Variable"]


@pytest.mark.parametrize(
    "bad",
    [{"100": '"Sup" <+1202;Dial(x)>'}, {"1,0": "+12025550100"}, {"100": ""}, {"100": "${EVIL}"}],
)
def test_bad_did_mapping_is_refused(bad: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="callerid_by_did"):
        DialerConfig(callerid_by_did=bad)
