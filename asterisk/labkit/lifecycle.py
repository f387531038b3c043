"""up, down and status."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

from labkit.ami import ami_check, check_modules, wait_fully_booted
from labkit.chroot import (
    MARKER,
    cache_dir,
    chroot_dir,
    copy_configs,
    current_profile,
    ensure_chroot,
    ensure_host_packages,
    mounts_under,
    operator_count,
    reset_runtime,
    switch_profile,
)
from labkit.layout import (
    AMI_PORT,
    AMI_PRODUCT,
    ASTERISK_BOOT_TIMEOUT,
    CACHE_BASE,
    DEFAULT_OPERATORS,
    LOCALHOST,
    MAX_OPERATORS,
    MORE_OPERATORS_PORT,
    OPERATORS,
    PSTN_PORT,
    SIP_PORT,
    STATE_DIR,
    LabError,
    log,
    warn,
)
from labkit.operators import parse_operator_behaviour, start_more_operators, start_operator
from labkit.procs import (
    all_pids,
    asterisk_pid,
    file_lock,
    fmt_secs,
    is_our_pstn,
    is_our_sipp,
    operator_running,
    pid_alive,
    port_free,
    port_owner,
    proc_cmdline,
    proc_root,
    pstn_pid,
    read_json,
    require_root,
    running_calls,
    state_path,
    stop_pid,
    wait_reaped,
    write_json,
)
from labkit.pstn import pstn_default_state, pstn_load, pstn_lock, pstn_state_file, start_pstn


def lab_lock():
    return file_lock(state_path("lab.lock"))


def check_ports() -> None:
    wanted = [
        (AMI_PORT, "tcp", "AMI"),
        (SIP_PORT, "udp", "Asterisk SIP"),
        (PSTN_PORT, "udp", "PSTN responder"),
    ]
    wanted += [(port, "udp", f"operator {name}") for name, port in OPERATORS.items()]
    problems = []
    for port, proto, what in wanted:
        if not port_free(port, proto):
            owner = port_owner(port, proto)
            problems.append(f"port {port}/{proto} ({what}) is taken" + (f" by {owner}" if owner else ""))
    if problems:
        raise LabError("cannot start the lab: " + "; ".join(problems), 4)


def start_asterisk(root: Path) -> int:
    out = state_path("asterisk.out")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            ["chroot", str(root), "/usr/sbin/asterisk", "-f", "-n"],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    # chroot execs asterisk, so the pid is Asterisk's
    write_json(state_path("asterisk.json"), {"pid": proc.pid, "root": str(root), "started": time.time()})
    (state_path("chroot")).write_text(str(root) + "\n")
    return proc.pid


def lab_is_up() -> bool:
    return asterisk_pid() is not None and ami_check()[0] and pstn_pid() is not None


def cmd_up(args) -> int:
    require_root()
    t0 = time.monotonic()
    wanted = {name: getattr(args, name) or "answer" for name in OPERATORS}
    for b in wanted.values():
        parse_operator_behaviour(b)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    operators = getattr(args, "operators", DEFAULT_OPERATORS)
    if not DEFAULT_OPERATORS <= operators <= MAX_OPERATORS:
        raise LabError(f"--operators must be {DEFAULT_OPERATORS} to {MAX_OPERATORS}")
    with lab_lock():
        if lab_is_up() and operator_count() != operators:
            log(f"operators {operator_count()} -> {operators}: restarting the lab")
            args.restart = True
        if lab_is_up() and not args.restart and not args.rebuild:
            changed = []
            if switch_profile(args.profile):
                changed.append(f"profile {args.profile}")
            for name in OPERATORS:
                running, info = operator_running(name)
                explicit = getattr(args, name)
                if explicit and explicit != info.get("behaviour"):
                    start_operator(name, explicit)
                    changed.append(f"{name}={explicit}")
                elif not running and info.get("behaviour") != "off":
                    start_operator(name, info.get("behaviour") or "answer")
                    changed.append(f"{name} restarted")
            log(
                "lab already up"
                + (f" ({', '.join(changed)})" if changed else "")
                + f"; checked in {fmt_secs(time.monotonic() - t0)}"
            )
            return 0
        if any_lab_process():
            log("stopping the previous lab first")
            teardown(quiet=True)
        ensure_host_packages()
        root, t_chroot, built = ensure_chroot(rebuild=args.rebuild)
        check_ports()
        write_json(state_path("operators.json"), {"operators": operators})
        copy_configs(root, args.profile)
        reset_runtime(root)
        for f in ("pstn-calls.log",):
            with contextlib.suppress(FileNotFoundError):
                state_path(f).unlink()
        with pstn_lock():
            write_json(pstn_state_file(), pstn_default_state())
        t1 = time.monotonic()
        pid = start_asterisk(root)
        try:
            wait_fully_booted(pid, time.monotonic() + ASTERISK_BOOT_TIMEOUT)
            t_boot = time.monotonic() - t1
            check_modules()
            ok, detail = ami_check(AMI_PRODUCT)
            if not ok:
                raise LabError(f"Asterisk is up but the callbackd AMI login fails: {detail}", 3)
            t2 = time.monotonic()
            start_pstn()
            for name, behaviour in wanted.items():
                start_operator(name, behaviour)
            if operators > DEFAULT_OPERATORS:
                start_more_operators(operators)
            t_phones = time.monotonic() - t2
        except BaseException:
            warn("start-up failed; stopping what was started")
            teardown(quiet=True)
            raise
        version = read_json(root / MARKER, {}).get("asterisk", "Asterisk")
        log(
            f"lab up in {fmt_secs(time.monotonic() - t0)} "
            f"(chroot {'built' if built else 'cached'} {fmt_secs(t_chroot)}, "
            f"Asterisk FullyBooted {fmt_secs(t_boot)}, phones {fmt_secs(t_phones)})"
        )
        log(f"  {version}, pid {pid}, AMI {LOCALHOST}:{AMI_PORT}, SIP {LOCALHOST}:{SIP_PORT}")
        log(f"  profile: {args.profile}")
        log("  operators: " + ", ".join(f"{n} {b} ({LOCALHOST}:{OPERATORS[n]})" for n, b in wanted.items()))
        if operators > DEFAULT_OPERATORS:
            log(f"  op3..op{operators}: answer ({LOCALHOST}:{MORE_OPERATORS_PORT}, one SIPp), queue support")
        log(f"  pstn: PJSIP/<number>@pstn -> {LOCALHOST}:{PSTN_PORT}; state {STATE_DIR}")
    return 0


def any_lab_process() -> list[tuple[int, str]]:
    """Every process the lab started that still runs: by recorded pid and by scan."""
    found: dict[int, str] = {}
    info = read_json(state_path("asterisk.json"), {})
    roots = {info.get("root")} | {str(chroot_dir())}
    roots.discard(None)
    for pid in all_pids():
        if pid == os.getpid() or not pid_alive(pid):
            continue
        root = proc_root(pid)
        if root in roots:
            found[pid] = (
                "asterisk" if (proc_cmdline(pid) or [""])[0].endswith("asterisk") else "chroot process"
            )
        elif is_our_sipp(pid):
            found[pid] = "sipp"
        elif is_our_pstn(pid):
            found[pid] = "pstn responder"
    return sorted(found.items())


def teardown(quiet: bool = False) -> list[str]:
    stopped = []
    # Callers first, then phones and the PSTN, then Asterisk.
    order = {"sipp": 0, "pstn responder": 1, "chroot process": 2, "asterisk": 3}
    for _ in range(3):
        procs = sorted(any_lab_process(), key=lambda p: order.get(p[1], 9))
        if not procs:
            break
        for pid, what in procs:
            grace = 15.0 if what == "asterisk" else 3.0
            if stop_pid(pid, what, grace=grace):
                stopped.append(f"{what} {pid}")
    zombies = wait_reaped([int(x.rsplit(" ", 1)[1]) for x in stopped])
    if zombies and not quiet:
        log(f"  exited, not yet reaped by their parent: {', '.join(map(str, zombies))}")
    for f in ("asterisk.json", "pstn-server.json"):
        with contextlib.suppress(FileNotFoundError):
            state_path(f).unlink()
    for f in state_path("phones").glob("*.json"):
        f.unlink()
    for f in state_path("calls").glob("*.json"):
        f.unlink()
    if not quiet:
        for s in stopped:
            log(f"  stopped {s}")
    return stopped


def cmd_down(args) -> int:
    require_root()
    t0 = time.monotonic()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with lab_lock():
        stopped = teardown()
        left = any_lab_process()
        mounts = mounts_under(CACHE_BASE)
        if left:
            raise LabError("processes still running after down: " + ", ".join(f"{w} {p}" for p, w in left), 5)
        if mounts:
            raise LabError(f"mounts left under {CACHE_BASE}: {', '.join(mounts)}", 5)
    log(
        ("lab down" if stopped else "lab was not running")
        + f" in {fmt_secs(time.monotonic() - t0)}; no lab process or mount left"
    )
    return 0


def gather_status() -> dict:
    info = read_json(state_path("asterisk.json"), {})
    apid = asterisk_pid()
    ami_ok, ami_detail = ami_check() if apid else (False, "Asterisk not running")
    cb_ok, _ = ami_check(AMI_PRODUCT) if ami_ok else (False, "")
    ops = {}
    for name, port in OPERATORS.items():
        running, oinfo = operator_running(name)
        ops[name] = {
            "port": port,
            "behaviour": oinfo.get("behaviour"),
            "running": running,
            "pid": oinfo.get("pid") if running else None,
        }
    ppid = pstn_pid()
    pst = pstn_load() if pstn_state_file().exists() else pstn_default_state()
    root = info.get("root") or str(chroot_dir())
    return {
        "up": bool(apid and ami_ok and ppid),
        "profile": current_profile(),
        "asterisk": {
            "running": bool(apid),
            "pid": apid,
            "root": root,
            "uptime": round(time.time() - info["started"], 1) if apid and info.get("started") else None,
            "version": read_json(Path(root) / MARKER, {}).get("asterisk"),
            "log": str(Path(root) / "var/log/asterisk/full"),
        },
        "ami": {
            "reachable": ami_ok,
            "detail": ami_detail,
            "callbackd_login": cb_ok,
            "address": f"{LOCALHOST}:{AMI_PORT}",
        },
        "sip": f"{LOCALHOST}:{SIP_PORT}",
        "operators": ops,
        "pstn": {
            "running": bool(ppid),
            "pid": ppid,
            "port": PSTN_PORT,
            "talk": pst["talk"],
            "ring": pst["ring"],
            "scripts": pst["scripts"],
        },
        "calls": running_calls(),
        "state_dir": str(STATE_DIR),
        "cache": str(cache_dir()),
    }


def cmd_status(args) -> int:
    st = gather_status()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0 if st["up"] else 3
    a = st["asterisk"]
    log(f"lab is {'UP' if st['up'] else 'DOWN'}")
    if a["running"]:
        log(f"  asterisk   pid {a['pid']}, up {a['uptime']} s, {a['version'] or ''}")
    else:
        log("  asterisk   not running")
    am = st["ami"]
    log(
        f"  ami        {am['address']}: "
        + (
            f"reachable ({am['detail']}), callbackd login {'ok' if am['callbackd_login'] else 'FAILS'}"
            if am["reachable"]
            else f"not reachable ({am['detail']})"
        )
    )
    log(f"  sip        {st['sip']}")
    log(f"  profile    {st['profile']}")
    for name, o in st["operators"].items():
        state = f"sipp pid {o['pid']}" if o["running"] else "not running"
        log(f"  {name:<10} {LOCALHOST}:{o['port']} {o['behaviour'] or '-':<10} {state}")
    p = st["pstn"]
    log(
        f"  pstn       {LOCALHOST}:{p['port']} "
        + (f"pid {p['pid']}" if p["running"] else "not running")
        + f", talk {p['talk']} s, ring {p['ring']} s, {len(p['scripts'])} scripted number(s)"
    )
    log(
        f"  calls      {len(st['calls'])} running"
        + "".join(f"\n             pid {c['pid']} from {c['from']} to {c['to']}" for c in st["calls"])
    )
    log(f"  log        {a['log']}")
    log(f"  state      {st['state_dir']}")
    log(f"  cache      {st['cache']}")
    return 0 if st["up"] else 3
