"""The Debian package, built by packaging/build-deb and installed into a fresh Debian bookworm
chroot (debootstrap, cached in /var/cache/callbackd-deb-test like the lab's chroot): the CLI from
the installed files, check-config on the shipped config, db upgrade, a daemon from the installed
files recording a missed call placed through the lab's Asterisk (the chroot shares the host's
network), then an upgrade to a newer build that keeps the changed conffile and the database, and a
purge. Commands in the chroot run in a private mount namespace with /proc, /sys and /dev mounted in
it, so nothing stays mounted when they end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging"))
import debchroot  # noqa: E402
from labdaemon import unit_environment  # noqa: E402

pytestmark = pytest.mark.lab

OLD, NEW = "0.1.0~pkgtest1-1", "0.1.0~pkgtest2-1"
CONF = "/etc/callbackd/callbackd.toml"
AS_USER = "runuser -u callbackd -- "


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict[str, Path]:
    """Two builds of the tree with different versions (the second one is the upgrade).
    CALLBACKD_TEST_DEBS=DIR takes both from an earlier run's DIR instead of building them."""
    given = os.environ.get("CALLBACKD_TEST_DEBS")
    if given:
        return {v: next(Path(given).glob(f"callbackd_{v}_*.deb")) for v in (OLD, NEW)}
    out = tmp_path_factory.mktemp("debs")
    built = {}
    for version in (OLD, NEW):
        res = subprocess.run(
            [sys.executable, str(ROOT / "packaging/build-deb"), "--version", version, "--out", str(out),
             "--work", str(out / f"work-{version}")],
            capture_output=True, text=True, timeout=1800,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        built[version] = Path(res.stdout.strip().splitlines()[-1])
        shutil.rmtree(out / f"work-{version}", ignore_errors=True)
    return built


@pytest.fixture(scope="module")
def chroot(tmp_path_factory) -> Path:
    root = debchroot.fresh_copy(Path(f"/var/tmp/callbackd-pkgtest-{os.getpid()}/root"))
    yield root
    debchroot.remove_tree(root.parent)


def sh(root: Path, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return debchroot.run(root, script, check=check, timeout=600)


def install(root: Path, deb: Path) -> str:
    shutil.copy2(deb, root / "tmp" / deb.name)
    res = sh(root, f"dpkg -i --force-confold /tmp/{deb.name}")
    return res.stdout + res.stderr


class ChrootDaemon:
    """callbackd run from the installed files, as user callbackd, its JSON lines collected."""

    def __init__(self, root: Path) -> None:
        self.lines: list[dict] = []
        self._cond = threading.Condition()
        # The installed unit's environment (PYTHONOPTIMIZE among it), as systemd would give it.
        unit_env = unit_environment((root / "lib/systemd/system/callbackd.service").read_text())
        self.proc = debchroot.popen(
            root,
            # env and setpriv exec (runuser forks, and SIGKILLs its child 2 s after a SIGTERM)
            ["env", *(f"{k}={v}" for k, v in unit_env.items()),
             "setpriv", "--reuid=callbackd", "--regid=callbackd", "--init-groups",
             "/usr/bin/callbackd", "--config", CONF, "run"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "raw", "text": raw.rstrip()}
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, event: str, timeout: float, **match: str) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line.get("event") == event and all(str(line.get(k)) == v for k, v in match.items()):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(json.dumps(x) for x in self.lines[-15:])
                    raise AssertionError(f"no {event} {match} (exit {self.proc.poll()}); last lines:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def stop(self) -> tuple[int, dict]:
        """SIGTERM to the daemon itself (unshare's child: sh, chroot, env and setpriv all exec);
        its exit code, which unshare passes on, and its last line."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        os.kill(int(children[0]), signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, self.wait_for("daemon.stopped", 10)


def test_install_run_against_the_lab_upgrade_and_purge(debs, chroot, lab, paused) -> None:
    root = chroot
    # Install: the user, the state directory, the config's owner and mode, enabled but not started.
    out = install(root, debs[OLD])
    assert "callbackd" in sh(root, "getent passwd callbackd").stdout
    assert sh(root, "stat -c '%U:%G %a' /var/lib/callbackd").stdout.split() == ["callbackd:callbackd", "750"]
    assert sh(root, f"stat -c '%U:%G %a' {CONF} /etc/callbackd").stdout.split() == [
        "root:callbackd", "640", "root:callbackd", "750"]
    assert (root / "etc/systemd/system/multi-user.target.wants/callbackd.service").is_symlink(), out
    assert os.readlink(root / "usr/bin/callbackd") == "/opt/callbackd/bin/callbackd"
    shebang = (root / "opt/callbackd/bin/callbackd").read_text().splitlines()[0]
    assert shebang == "#!/opt/callbackd/bin/python"
    assert (root / "usr/share/man/man8/callbackd.8.gz").is_file()
    assert (root / "usr/share/callbackd/dialplans/callbackd.conf").is_file()
    unit = (root / "lib/systemd/system/callbackd.service").read_text()
    assert "ExecStart=/usr/bin/callbackd run" in unit
    assert "ConditionPathExists=/etc/callbackd/ami_secret" in unit
    # The service runs with -OO: its bytecode is compiled at install, /opt is read-only to it.
    assert unit_environment(unit)["PYTHONOPTIMIZE"] == "2"
    site = next((root / "opt/callbackd/lib").glob("python3*/site-packages"))
    for package in ("callbackd", "sqlalchemy"):
        assert list((site / package / "__pycache__").glob("__init__.*.opt-2.pyc")), package

    # The CLI from the installed files (--version where the CLI has it, else --help).
    version = sh(root, "callbackd --version", check=False)
    if version.returncode == 0:
        assert "0.1.0" in version.stdout + version.stderr
    else:
        assert "check-config" in sh(root, "callbackd --help").stdout

    # check-config: the shipped config wants its AMI secret file; with it in place it passes.
    refused = sh(root, f"{AS_USER}callbackd check-config", check=False)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    secret = (ROOT / "asterisk/lab-ami-secret").read_text()
    (root / "etc/callbackd/ami_secret").write_text(secret)
    sh(root, "chown root:callbackd /etc/callbackd/ami_secret && chmod 0640 /etc/callbackd/ami_secret")
    assert sh(root, f"{AS_USER}callbackd check-config").stdout.strip() == f"{CONF}: OK"

    sh(root, f"{AS_USER}callbackd db upgrade")
    assert (root / "var/lib/callbackd/callbackd.db").is_file()

    # The administrator adapts the conffile to this PBX (the lab's trunk and operators' context).
    conf = root / CONF.lstrip("/")
    text = conf.read_text()
    changed = (
        "# adapted to this PBX\n"
        + text.replace('dial_pattern = "PJSIP/{number}@trunk"', 'dial_pattern = "PJSIP/{number}@pstn"')
        .replace('outbound_contexts = ["from-internal"]', 'outbound_contexts = ["from-operators"]')
    )
    assert changed.count("@pstn") == 1
    conf.write_text(changed)

    # A daemon from the installed files records a missed call placed through the lab's Asterisk.
    sh(root, "install -d -o callbackd -g callbackd -m 0750 /run/callbackd")  # the unit's RuntimeDirectory
    daemon = ChrootDaemon(root)
    try:
        daemon.wait_for("ami.login", 30)
        lab.call("2025550177", 7, "100")
        missed = daemon.wait_for("call.missed", 30, number="2025550177")
        assert missed["reason"] == "queue_abandon"
        daemon.wait_for("request.stored", 15, number="+12025550177")
    finally:
        code, stopped = daemon.stop()
    assert (code, stopped["drained"]) == (0, True)
    listed = json.loads(sh(root, f"{AS_USER}callbackd requests list --json").stdout)
    assert [r["number"] for r in listed] == ["+12025550177"]

    # Upgrade: the changed conffile is kept, the database is migrated in place and kept.
    install(root, debs[NEW])
    assert sh(root, "dpkg-query -W -f '${Version}' callbackd").stdout == NEW
    assert conf.read_text() == changed
    assert sh(root, f"stat -c '%U:%G %a' {CONF}").stdout.split() == ["root:callbackd", "640"]
    listed = json.loads(sh(root, f"{AS_USER}callbackd requests list --json").stdout)
    assert [r["number"] for r in listed] == ["+12025550177"]
    assert sh(root, f"{AS_USER}callbackd check-config").stdout.strip() == f"{CONF}: OK"

    # Remove keeps the config; purge takes the config, the data and the enablement.
    sh(root, "dpkg --remove callbackd")
    assert conf.is_file() and not (root / "opt/callbackd").exists()
    sh(root, "dpkg --purge callbackd")
    for gone in ("etc/callbackd", "var/lib/callbackd", "opt/callbackd",
                 "etc/systemd/system/multi-user.target.wants/callbackd.service"):
        assert not (root / gone).exists(), gone
    assert "callbackd" not in sh(root, "dpkg-statoverride --list", check=False).stdout  # exit 1: none
