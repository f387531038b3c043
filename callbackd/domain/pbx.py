"""Which Asterisk versions callbackd can follow.

Detection ties every channel of a call together by ``Linkedid``. Asterisk 12
rebuilt AMI on channel snapshots (AMI 2.0): from then on every channel event
carries ``Uniqueid`` and ``Linkedid``, and the queue and dial events callbackd
reads (QueueCallerJoin, QueueCallerAbandon, AgentConnect, DialBegin, DialEnd)
exist under these names. Asterisk 11 and older (AMI 1.x: ``Join``, ``Dial
SubEvent: Begin``, no Linkedid on most events) would leave callbackd blind without
an error, so they are refused at login.
"""

from __future__ import annotations

import re

from callbackd.domain.errors import DomainError

MIN_ASTERISK = (12, 0)
MIN_AMI = (2, 0)
_VERSION = re.compile(r"(\d+)\.(\d+)")


class UnsupportedAsterisk(DomainError):
    """The PBX's AMI does not carry what detection needs."""


def parse_version(text: str) -> tuple[int, int] | None:
    """'22.10.1+dfsg+~cs6.17', 'certified/18.9-cert5', 'SVN-branch-11-r4' -> (major, minor).

    Development builds without a number ('GIT-master-1a2b3c') give None.
    """
    m = _VERSION.search(text)
    if m:
        return int(m.group(1)), int(m.group(2))
    branch = re.search(r"branch-(\d+)\b", text)
    return (int(branch.group(1)), 0) if branch else None


def check_asterisk(core_settings: dict[str, str]) -> str:
    """The version from a CoreSettings answer; raises :class:`UnsupportedAsterisk` if too old."""
    version = (core_settings.get("AsteriskVersion") or "").strip()
    ami = parse_version(core_settings.get("AMIversion") or "")
    found = parse_version(version)
    minimum = f"{MIN_ASTERISK[0]}.{MIN_ASTERISK[1]}"
    if (found is not None and found < MIN_ASTERISK) or (ami is not None and ami < MIN_AMI):
        ami_text = core_settings.get("AMIversion") or "?"
        raise UnsupportedAsterisk(
            f"Asterisk {version or '(unknown)'} (AMI {ami_text}) is not supported: "
            f"callbackd needs Asterisk {minimum} or later, whose AMI events carry Linkedid"
        )
    return version or "unknown"
