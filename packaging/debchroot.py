"""A Debian chroot made by debootstrap once and cached (like the Asterisk lab's), for building the
package's virtualenv with the target's own python3 and for installing the package in tests.

Commands run in a private mount namespace (`unshare --mount`) with /proc, /sys and /dev mounted
inside it: the mounts end with the command, nothing is left mounted on the host. The network is
the host's (no network namespace), so pip and apt inside reach the same registries.
Standard library only: build-deb runs it with the system python3.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = os.environ.get("CALLBACKD_DEB_SUITE", "bookworm")
VARIANT = "minbase"
# python3 and its venv module: the package's interpreter; systemd and adduser: what postinst uses.
PACKAGES = sorted(["adduser", "ca-certificates", "python3", "python3-venv", "systemd"])
MIRROR = os.environ.get("CALLBACKD_DEB_MIRROR", "http://deb.debian.org/debian")
CACHE_BASE = Path(os.environ.get("CALLBACKD_DEB_CACHE", "/var/cache/callbackd-deb-test"))
MARKER = ".callbackd-deb-chroot.json"


class ChrootError(Exception):
    pass


def cache_key(suite: str = SUITE) -> str:
    spec = {"suite": suite, "variant": VARIANT, "packages": PACKAGES, "layout": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _mounted_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp == prefix or mp.startswith(prefix + "/"):
            found.append(mp)
    return found


def remove_tree(path: Path) -> None:
    """rm -rf that refuses a tree with anything mounted in it."""
    if not path.exists():
        return
    mounted = _mounted_under(path)
    if mounted:
        raise ChrootError(f"refusing to delete {path}: still mounted: {', '.join(mounted)}")
    shutil.rmtree(path)


def ensure_host_tools() -> None:
    tools = (("debootstrap", "debootstrap"), ("unshare", "util-linux"))
    missing = [pkg for tool, pkg in tools if not shutil.which(tool)]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, check=True)


def base_root(suite: str = SUITE) -> Path:
    """The cached chroot (built on first use, about 2-4 min; then instant). Never modified after."""
    base = CACHE_BASE / f"{suite}-{cache_key(suite)}"
    root = base / "root"
    base.mkdir(parents=True, exist_ok=True)
    with _lock(base / "build.lock"):
        if (root / MARKER).exists():
            return root
        if root.exists():
            raise ChrootError(f"{root} exists but is not a finished chroot; remove it")
        ensure_host_tools()
        for stale in base.glob("root.tmp-*"):
            remove_tree(stale)
        tmp = base / f"root.tmp-{os.getpid()}"
        cmd = ["unshare", "--mount", "--fork", "debootstrap", f"--variant={VARIANT}",
               f"--include={','.join(PACKAGES)}", suite, str(tmp), MIRROR]
        log = base / "debootstrap.log"
        with open(log, "w") as out:
            res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise ChrootError(f"debootstrap {suite} failed (exit {res.returncode}), {log}:\n{tail}")
        (tmp / MARKER).write_text(json.dumps({
            "suite": suite, "packages": PACKAGES, "mirror": MIRROR,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }) + "\n")
        os.rename(tmp, root)
        return root


def fresh_copy(dest: Path, suite: str = SUITE) -> Path:
    """A private copy of the cached chroot at dest (a few seconds), to change at will."""
    src = base_root(suite)
    remove_tree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dest)], check=True)
    (dest / MARKER).unlink()
    shutil.copy2("/etc/resolv.conf", dest / "etc/resolv.conf")
    return dest


_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
        "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


def run(root: Path, script: str, *, env: dict[str, str] | None = None, check: bool = True,
        timeout: float | None = None, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """sh -c script inside the chroot, with /proc, /sys and /dev mounted in a private namespace."""
    inner = {**_ENV, **(env or {})}
    r = shlex.quote(str(root))
    setup = (f"mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && "
             f"mount --rbind /dev {r}/dev && exec chroot {r} /usr/bin/env -i "
             + " ".join(shlex.quote(f"{k}={v}") for k, v in inner.items())
             + " /bin/sh -c " + shlex.quote(script))
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", setup],
                         capture_output=capture, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        out = ((res.stdout or "") + (res.stderr or "")).strip().splitlines()[-25:]
        raise ChrootError(f"in chroot {root}: exit {res.returncode}: {script}\n" + "\n".join(out))
    return res


def popen(root: Path, argv: Sequence[str], **kw: object) -> subprocess.Popen[str]:
    """A long-running command in the chroot (same mounts and environment as run). terminate()
    ends unshare, whose child then gets SIGTERM (--kill-child) and passes it on by exec."""
    r = shlex.quote(str(root))
    setup = (f"mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && "
             f"mount --rbind /dev {r}/dev && exec chroot {r} /usr/bin/env -i "
             + " ".join(shlex.quote(f"{k}={v}") for k, v in _ENV.items()) + " "
             + " ".join(map(shlex.quote, argv)))
    cmd = ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child=SIGTERM"]
    return subprocess.Popen([*cmd, "sh", "-c", setup], **kw)  # type: ignore[call-overload]
