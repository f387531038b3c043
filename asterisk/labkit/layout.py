"""Where the lab lives, its ports, accounts and defaults."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # asterisk/


REPO = HERE.parent


ETC_DIR = HERE / "etc"


SIPP_DIR = HERE / "sipp"


# A profile overlays etc/ with its own files (same name: replaced; new name: added).
PROFILES_DIR = HERE / "profiles"


DEFAULT_PROFILE = "default"


PROFILE_MODULES = {"freepbx": ["app_mixmonitor.so"]}


DIALPLAN_DIR = REPO / "dialplans"


SUITE = "sid"


VARIANT = "minbase"


BASE_PACKAGES = ["asterisk", "asterisk-modules"]


EXTRA_PACKAGES = [p for p in re.split(r"[,\s]+", os.environ.get("CALLBACKD_LAB_PACKAGES", "")) if p]


PACKAGES = sorted(set(BASE_PACKAGES + EXTRA_PACKAGES))


MIRROR = os.environ.get("CALLBACKD_LAB_MIRROR", "http://deb.debian.org/debian")


CACHE_BASE = Path(os.environ.get("CALLBACKD_LAB_CACHE", "/var/cache/callbackd-lab"))


STATE_DIR = Path(os.environ.get("CALLBACKD_LAB_STATE", "/run/callbackd-lab"))


HOST_PACKAGES = {"debootstrap": "debootstrap", "sipp": "sip-tester", "unshare": "util-linux"}


LOCALHOST = "127.0.0.1"


AMI_PORT = 5038


SIP_PORT = 5070


PSTN_PORT = 5085


OPERATORS = {"op1": 5081, "op2": 5082}
# `asterisk/lab up --operators N` (N > 2): op3..opN more operators in the support queue, every
# one a PJSIP endpoint whose contact is this port, where one SIPp answers them all.
MORE_OPERATORS_PORT = 5090
DEFAULT_OPERATORS = 2
MAX_OPERATORS = 500


AMI_ADMIN = ("lab", "lab-admin-secret")


AMI_PRODUCT = ("callbackd", "callbackd-lab-secret")


OPERATOR_BEHAVIOURS = {
    "answer": "op-answer.xml",
    "busy": "op-busy.xml",
    "noanswer": "op-noanswer.xml",
    "reject": "op-reject.xml",
    "off": None,
}


PSTN_BEHAVIOURS = {
    # name: (SIP final response, reason); answer and noanswer are handled apart
    "answer": (200, "OK"),
    # Answer and talk (RTP): "human" says one short word then stays silent, "machine" plays a
    # 4 s greeting; Asterisk's AMD() tells them apart (HUMAN / MACHINE LONGGREETING).
    "human": (200, "OK"),
    "machine": (200, "OK"),
    "noanswer": (None, None),
    "busy": (486, "Busy Here"),
    "unallocated": (404, "Not Found"),
    "congestion": (503, "Service Unavailable"),
    "reject": (603, "Decline"),
    "unavailable": (480, "Temporarily Unavailable"),
}


PSTN_DEFAULT_BY_LAST_DIGIT = {"0": "unallocated", "6": "busy", "7": "noanswer", "8": "congestion"}


PSTN_DEFAULT_TALK = 3.0


PSTN_DEFAULT_RING = 0.5


PSTN_NOANSWER_CAP = 300.0  # a ringing client gives up (480) after this long


PSTN_TALK_CAP = 3600.0  # "answer:0" clients hang up after this long at the latest


CALL_SAFETY_CAP = 120  # seconds a caller stays at most when --hangup-after is 0/absent


ASTERISK_BOOT_TIMEOUT = float(os.environ.get("CALLBACKD_LAB_BOOT_TIMEOUT", "90"))


class LabError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def log(msg: str) -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)
