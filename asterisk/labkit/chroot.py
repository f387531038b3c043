"""Host packages, the cached Debian chroot with Asterisk, and the configs copied into it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from labkit.ami import Ami, ami_check
from labkit.layout import (
    AMI_ADMIN,
    AMI_PRODUCT,
    CACHE_BASE,
    DEFAULT_OPERATORS,
    DEFAULT_PROFILE,
    DIALPLAN_DIR,
    ETC_DIR,
    HOST_PACKAGES,
    LOCALHOST,
    MIRROR,
    MORE_OPERATORS_PORT,
    PACKAGES,
    PROFILE_MODULES,
    PROFILES_DIR,
    SUITE,
    VARIANT,
    LabError,
    log,
)
from labkit.procs import file_lock, fmt_secs, pid_alive, read_json, state_path, write_json


def ensure_host_packages() -> None:
    missing = sorted({pkg for binary, pkg in HOST_PACKAGES.items() if not shutil.which(binary)})
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise LabError(f"missing host tools ({', '.join(missing)}) and no apt-get to install them", 2)
    log(f"installing host packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
            raise LabError(f"'{' '.join(cmd)}' failed (exit {res.returncode}):\n{tail}", 2)
    still = sorted({pkg for binary, pkg in HOST_PACKAGES.items() if not shutil.which(binary)})
    if still:
        raise LabError(f"host packages still missing after apt-get install: {', '.join(still)}", 2)


def cache_key() -> str:
    spec = {"suite": SUITE, "variant": VARIANT, "packages": PACKAGES, "layout": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    return CACHE_BASE / cache_key()


def chroot_dir() -> Path:
    return cache_dir() / "root"


MARKER = ".callbackd-lab.json"


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path (host mount namespace)."""
    prefix = str(path).rstrip("/")
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            mp = fields[4].replace("\\040", " ")
            if mp == prefix or mp.startswith(prefix + "/"):
                found.append(mp)
    return found


def safe_rmtree(path: Path) -> None:
    if not path.exists():
        return
    mounted = mounts_under(path)
    if mounted:
        raise LabError(f"refusing to delete {path}: still mounted: {', '.join(mounted)}")
    shutil.rmtree(path)


def ensure_chroot(rebuild: bool = False) -> tuple[Path, float, bool]:
    """Return (chroot path, seconds spent, built). Builds into a temp dir, renames atomically."""
    t0 = time.monotonic()
    root = chroot_dir()
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / "build.lock"):
        if (root / MARKER).exists() and not rebuild:
            return root, time.monotonic() - t0, False
        if root.exists() and not rebuild:
            # A directory without the marker was not produced by a finished build.
            raise LabError(f"{root} exists but is not a finished lab chroot; remove it or run 'up --rebuild'")
        # Leftovers of interrupted builds.
        for stale in [*base.glob("root.tmp-*"), *base.glob("root.old-*")]:
            pid = stale.name.rsplit("-", 1)[-1]
            if not (pid.isdigit() and pid_alive(int(pid))):
                log(f"removing unfinished build {stale}")
                safe_rmtree(stale)
        tmp = base / f"root.tmp-{os.getpid()}"
        build_log = base / "debootstrap.log"
        include = ",".join(PACKAGES)
        cmd = [
            "unshare",
            "--mount",
            "--fork",
            "debootstrap",
            f"--variant={VARIANT}",
            f"--include={include}",
            SUITE,
            str(tmp),
            MIRROR,
        ]
        log(f"building chroot (Debian {SUITE}, {include}) into {tmp}; log: {build_log}")
        with open(build_log, "w") as out:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-20:])
            with contextlib.suppress(LabError, OSError):
                safe_rmtree(tmp)
            raise LabError(
                f"debootstrap failed (exit {res.returncode}); last lines of {build_log}:\n{tail}", 2
            )
        asterisk_bin = tmp / "usr/sbin/asterisk"
        if not asterisk_bin.exists():
            safe_rmtree(tmp)
            raise LabError(f"debootstrap finished but {asterisk_bin} is missing; see {build_log}", 2)
        # Keep the distribution's sample configs aside; the lab writes its own /etc/asterisk.
        etc = tmp / "etc/asterisk"
        if etc.exists() and not (tmp / "etc/asterisk.dist").exists():
            os.rename(etc, tmp / "etc/asterisk.dist")
        version = subprocess.run(
            ["chroot", str(tmp), "/usr/sbin/asterisk", "-V"], capture_output=True, text=True
        ).stdout.strip()
        write_json(
            tmp / MARKER,
            {
                "suite": SUITE,
                "variant": VARIANT,
                "packages": PACKAGES,
                "mirror": MIRROR,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "asterisk": version,
            },
        )
        if root.exists():  # --rebuild: swap the new chroot in, then drop the old one
            old = base / f"root.old-{os.getpid()}"
            os.rename(root, old)
            os.rename(tmp, root)
            log(f"removing the previous chroot {old}")
            safe_rmtree(old)
        else:
            os.rename(tmp, root)
        log(f"chroot ready: {version} in {fmt_secs(time.monotonic() - t0)}")
        return root, time.monotonic() - t0, True


def profiles() -> list[str]:
    return [DEFAULT_PROFILE, *sorted(d.name for d in PROFILES_DIR.iterdir() if d.is_dir())]


def current_profile() -> str:
    return read_json(state_path("profile.json"), {}).get("profile", DEFAULT_PROFILE)


def copy_configs(root: Path, profile: str = DEFAULT_PROFILE) -> list[str]:
    """Replace the chroot's /etc/asterisk with the repo's lab configs and the product's dialplans,
    then the profile's own files on top."""
    if profile not in profiles():
        raise LabError(f"unknown profile {profile!r}; use one of {', '.join(profiles())}")
    etc = root / "etc/asterisk"
    if mounts_under(etc):
        raise LabError(f"{etc} is a mount point; run 'asterisk/lab down' first")
    sources = sorted(ETC_DIR.glob("*.conf"))
    if not sources:
        raise LabError(f"no lab configs found in {ETC_DIR}")
    dialplans = sorted(DIALPLAN_DIR.glob("*.conf"))
    if not dialplans:
        raise LabError(f"no product dialplans found in {DIALPLAN_DIR}")
    clash = {f.name for f in sources} & {f.name for f in dialplans}
    if clash:
        raise LabError(f"{', '.join(sorted(clash))} exist both in {ETC_DIR} and {DIALPLAN_DIR}; rename one")
    if etc.exists():
        shutil.rmtree(etc)
    etc.mkdir(parents=True)
    for src in sources + dialplans:
        shutil.copy2(src, etc / src.name)
    overlay = sorted((PROFILES_DIR / profile).glob("*.conf")) if profile != DEFAULT_PROFILE else []
    for src in overlay:
        shutil.copy2(src, etc / src.name)
    write_json(state_path("profile.json"), {"profile": profile})
    write_operator_configs(etc, operator_count())
    return sorted({f.name for f in sources + dialplans + overlay})


def operator_count() -> int:
    """How many operators the lab runs (`asterisk/lab up --operators N`; 2 by default)."""
    return int(read_json(state_path("operators.json"), {}).get("operators", DEFAULT_OPERATORS))


def write_operator_configs(etc: Path, n: int) -> None:
    """op3..opN: PJSIP endpoints reached at MORE_OPERATORS_PORT and members of the support queue
    (pjsip.conf and queues.conf include these files; with 2 operators they are empty)."""
    pjsip, members = [], []
    for k in range(DEFAULT_OPERATORS + 1, n + 1):
        name = f"op{k}"
        pjsip += [
            f"[{name}](lab-endpoint)",
            "context = from-operators",
            f'callerid = "Operator {k}" <{200 + k}>',
            f"aors = {name}",
            "",
            f"[{name}](lab-aor)",
            f"contact = sip:{name}@{LOCALHOST}:{MORE_OPERATORS_PORT}",
            "",
        ]
        members.append(f"member => PJSIP/{name},0,Operator {k},PJSIP/{name}")
    (etc / "pjsip_operators.conf").write_text("\n".join(pjsip) + "\n")
    (etc / "queues_operators.conf").write_text("\n".join(members) + "\n")


def switch_profile(profile: str) -> bool:
    """Load another profile into the running Asterisk (configs copied, 'core reload'); False if
    it was already active. Calls in progress keep running; phones and the PSTN stay up."""
    if profile == current_profile():
        return False
    root = Path(read_json(state_path("asterisk.json"), {})["root"])
    copy_configs(root, profile)
    ami = Ami(timeout=10)
    try:
        ami.login(*AMI_ADMIN)
        resp = ami.action("Command", Command="core reload")
        # modules.conf loads these at start; a lab started before they were listed loads them now.
        for module in PROFILE_MODULES.get(profile, ()):
            ami.action("ModuleLoad", Module=module, LoadType="load")
    finally:
        ami.close()
    if resp.get("Response") != "Success":
        raise LabError(f"core reload failed: {resp.get('Message', resp)}")
    # The reload is asynchronous: wait until the profile's queues and AMI users answer.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ok, _ = ami_check(AMI_PRODUCT)
        if ok:
            break
        time.sleep(0.2)
    else:
        raise LabError(f"after switching to profile {profile!r} the callbackd AMI login fails")
    time.sleep(1.0)
    return True


def reset_runtime(root: Path) -> None:
    """Runtime directories; every start begins with an empty AstDB and fresh logs."""
    for d in (
        "run/asterisk",
        "var/log/asterisk",
        "var/lib/asterisk",
        "var/spool/asterisk",
        "var/cache/asterisk",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in ("var/lib/asterisk/astdb.sqlite3", "run/asterisk/asterisk.ctl", "run/asterisk/asterisk.pid"):
        with contextlib.suppress(FileNotFoundError):
            (root / f).unlink()
    for f in (root / "var/log/asterisk").glob("*"):
        if f.is_file():
            f.unlink()
