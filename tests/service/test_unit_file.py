"""systemd-analyze verify on the shipped unit, with ExecStart pointing at the installed command."""

import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "callbackd.service"


def test_unit_verifies(tmp_path):
    exe = shutil.which("callbackd") or str(Path(sys.executable).parent / "callbackd")
    assert Path(exe).exists(), "pip install . must provide the callbackd command"
    unit = tmp_path / "callbackd.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/callbackd", exe))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_unit_has_the_promised_settings():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        # Never give up during a slow boot: the daemon waits for AMI and the database itself,
        # pushing the start timeout on with EXTEND_TIMEOUT_USEC.
        "StartLimitIntervalSec=0",
        "TimeoutStartSec=60s",
        "User=callbackd",
        "StateDirectory=callbackd",
        "ConfigurationDirectory=callbackd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "RuntimeDirectory=callbackd",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert line in text, line


def test_unit_exposure_stays_at_the_level_the_readme_states(tmp_path):
    """README: "exposure level of 1.1 (OK)" with systemd 252; --threshold is that level times ten."""
    unit = tmp_path / "callbackd.service"
    unit.write_text(UNIT.read_text())
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=11", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
