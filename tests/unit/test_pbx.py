"""The Asterisk version check at login (CoreSettings answers as Asterisk sends them)."""

import pytest

from callbackd.domain.pbx import UnsupportedAsterisk, check_asterisk, parse_version


@pytest.mark.parametrize(
    "text, expected",
    [
        ("22.10.1+dfsg+~cs6.17.60671434-1", (22, 10)),
        ("16.30.1", (16, 30)),
        ("certified/18.9-cert5", (18, 9)),
        ("13.0.0-beta1", (13, 0)),
        ("11.25.3", (11, 25)),
        ("SVN-branch-11-r430000", (11, 0)),
        ("GIT-master-1a2b3c4", None),
        ("", None),
    ],
)
def test_versions_are_read_from_every_shape_asterisk_reports(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize(
    "settings",
    [
        {"AsteriskVersion": "22.10.1+dfsg+~cs6.17.60671434-1", "AMIversion": "11.0.0"},  # AMI 11: Ast. 22
        {"AsteriskVersion": "16.30.1", "AMIversion": "5.0.4"},
        {"AsteriskVersion": "13.38.3", "AMIversion": "2.10.6"},
        {"AsteriskVersion": "12.8.2", "AMIversion": "2.8.0"},
        {"AsteriskVersion": "GIT-master-1a2b3c4", "AMIversion": "12.0.0"},
    ],
)
def test_versions_with_linkedid_on_every_event_are_accepted(settings):
    assert check_asterisk(settings) == settings["AsteriskVersion"]


@pytest.mark.parametrize(
    "settings",
    [
        {"AsteriskVersion": "11.25.3", "AMIversion": "1.3"},
        {"AsteriskVersion": "1.8.32.3", "AMIversion": "1.1"},
        {"AsteriskVersion": "SVN-branch-11-r430000", "AMIversion": "1.3"},
        {"AsteriskVersion": "GIT-master-1a2b3c4", "AMIversion": "1.4"},
    ],
)
def test_older_versions_are_refused_with_one_line_naming_the_minimum(settings):
    with pytest.raises(UnsupportedAsterisk) as err:
        check_asterisk(settings)
    message = str(err.value)
    assert "\n" not in message and "Asterisk 12.0 or later" in message
    assert settings["AsteriskVersion"] in message
