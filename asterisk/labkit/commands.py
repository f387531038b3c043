"""operator, pstn, call, trace, cli, reload and build."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path

from labkit.ami import Ami
from labkit.chroot import copy_configs, current_profile, ensure_chroot, ensure_host_packages
from labkit.layout import (
    AMI_ADMIN,
    AMI_PRODUCT,
    CALL_SAFETY_CAP,
    LOCALHOST,
    OPERATORS,
    PSTN_DEFAULT_BY_LAST_DIGIT,
    SIP_PORT,
    SIPP_DIR,
    STATE_DIR,
    LabError,
    log,
    warn,
)
from labkit.lifecycle import lab_lock
from labkit.operators import parse_operator_behaviour, start_operator
from labkit.procs import (
    asterisk_pid,
    fmt_secs,
    free_udp_port,
    operator_info,
    operator_running,
    pid_alive,
    read_json,
    require_root,
    state_path,
    stop_pid,
    write_json,
)
from labkit.pstn import (
    number_key,
    parse_pstn_item,
    pstn_default_behaviour,
    pstn_default_state,
    pstn_load,
    pstn_lock,
    pstn_state_file,
)


def require_up() -> None:
    if asterisk_pid() is None:
        raise LabError("the lab is not running; start it with 'asterisk/lab up'", 3)


def cmd_operator(args) -> int:
    require_root()
    names = list(OPERATORS) if args.name == "all" else args.name.split(",")
    for n in names:
        if n not in OPERATORS:
            raise LabError(f"unknown operator {n!r}; operators: {', '.join(OPERATORS)} (or 'all')")
    if not args.behaviour:
        for n in names:
            running, info = operator_running(n)
            log(f"{n} {info.get('behaviour') or '-'} ({'running' if running else 'not running'})")
        return 0
    parse_operator_behaviour(args.behaviour)
    require_up()
    with lab_lock():
        for n in names:
            before = operator_info(n).get("pid")
            info = start_operator(n, args.behaviour, force=args.restart)
            state = f"sipp pid {info['pid']}" if info["pid"] else "phone off"
            if info["pid"] and info["pid"] == before:
                state += ", unchanged"
            log(f"{n} {args.behaviour} ({state})")
    return 0


def cmd_pstn(args) -> int:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    changed = False
    with pstn_lock():
        st = pstn_load()
        if args.reset:
            talk, ring = st["talk"], st["ring"]
            st = pstn_default_state()
            if args.talk is None:
                st["talk"] = talk
            if args.ring is None:
                st["ring"] = ring
            changed = True
            log("pstn: scripts and call counters cleared")
        if args.talk is not None:
            if args.talk < 0:
                raise LabError("--talk must be >= 0 (0 = the client stays until the other side hangs up)")
            st["talk"] = args.talk
            changed = True
            log(
                f"pstn: answered clients hang up after {args.talk:g} s"
                if args.talk
                else "pstn: answered clients stay until the other side hangs up"
            )
        if args.ring is not None:
            if args.ring < 0:
                raise LabError("--ring must be >= 0")
            st["ring"] = args.ring
            changed = True
            log(f"pstn: answering clients ring for {args.ring:g} s first")
        if args.number:
            if not re.sub(r"\D", "", args.number):
                raise LabError(f"not a phone number: {args.number!r}")
            key = number_key(args.number)
            if args.script is None:
                script = st["scripts"].get(key)
                log(
                    f"{args.number}: "
                    + (
                        f"script {','.join(script['items'])}, {script['calls']} call(s) so far"
                        if script
                        else f"default ({pstn_default_behaviour(args.number)})"
                    )
                )
            elif args.script in ("", "default"):
                st["scripts"].pop(key, None)
                changed = True
                log(f"pstn: {args.number} back to the default ({pstn_default_behaviour(args.number)})")
            else:
                items = [parse_pstn_item(i) for i in args.script.split(",") if i.strip()]
                if not items:
                    raise LabError("empty script")
                st["scripts"][key] = {"number": args.number, "items": items, "calls": 0}
                changed = True
                log(f"pstn: calls to {args.number}: " + ", then ".join(items) + " (the last one repeats)")
        if changed:
            write_json(pstn_state_file(), st)
    if args.show or not (changed or args.number or args.log):
        log(f"talk {st['talk']:g} s, ring {st['ring']:g} s")
        log(
            "default by last digit: "
            + ", ".join(f"{d}={b}" for d, b in sorted(PSTN_DEFAULT_BY_LAST_DIGIT.items()))
            + ", other digits=answer"
        )
        for key, s in sorted(st["scripts"].items()):
            log(f"  {s.get('number', key)}: {','.join(s['items'])} ({s['calls']} call(s) so far)")
    if args.log:
        with contextlib.suppress(FileNotFoundError):
            sys.stdout.write(state_path("pstn-calls.log").read_text())
    return 0


def summarize_call(msg_log: Path) -> dict:
    """Read a SIPp message log: final INVITE response and who hung up."""
    res = {"final": None, "reason": "", "bye": None}
    try:
        text = msg_log.read_text(errors="replace")
    except OSError:
        return res
    for block in re.split(r"\n-{10,} [^\n]*\n", "\n" + text):
        direction = (
            "sent"
            if "message sent" in block[:80]
            else "received"
            if "message received" in block[:80]
            else None
        )
        if not direction:
            continue
        body = block.split("\n", 2)[-1].lstrip("\n")
        first = body.split("\n", 1)[0].strip()
        cseq = re.search(r"^CSeq:\s*\d+\s+(\w+)", body, re.M | re.I)
        method = cseq.group(1).upper() if cseq else ""
        if direction == "received" and first.startswith("SIP/2.0") and method == "INVITE":
            code = int(first.split()[1])
            if code >= 200 and res["final"] is None:
                res["final"], res["reason"] = code, first.split(" ", 2)[2] if first.count(" ") >= 2 else ""
        if first.startswith("BYE "):
            res["bye"] = "caller" if direction == "sent" else "far end"
        if first.startswith("CANCEL ") and direction == "sent":
            res["bye"] = "caller (CANCEL)"
    return res


def cmd_call(args) -> int:
    require_root()
    require_up()
    number = args.from_
    if not re.fullmatch(r"\+?[0-9A-Za-z*#.\-]+", number):
        raise LabError(f"--from must be a phone number, got {number!r}")
    if not re.fullmatch(r"[0-9A-Za-z*#+_.\-]+", args.to):
        raise LabError(f"--to must be an extension, got {args.to!r}")
    if args.hangup_after is not None and args.hangup_after < 0:
        raise LabError("--hangup-after must be >= 0")
    hangup = args.hangup_after or 0
    limit_ms = int((hangup if hangup > 0 else CALL_SAFETY_CAP) * 1000)
    scenario = SIPP_DIR / "caller.xml"
    extra: list[str] = []
    if args.dtmf is not None:
        if not re.fullmatch(r"[0-9*#]", args.dtmf):
            raise LabError(f"--dtmf takes one key (0-9, * or #), got {args.dtmf!r}")
        if args.dtmf_after < 0:
            raise LabError("--dtmf-after must be >= 0")
        scenario = SIPP_DIR / "caller-dtmf.xml"
        extra = ["-key", "dtmf", args.dtmf, "-d", str(int(args.dtmf_after * 1000))]
        if hangup > 0:  # the scenario's timer restarts at the key press
            limit_ms = max(100, int((hangup - args.dtmf_after) * 1000))
    calls_dir = state_path("calls")
    calls_dir.mkdir(parents=True, exist_ok=True)
    prune_call_logs()
    port = free_udp_port()
    tag = f"{time.strftime('%H%M%S')}-{port}"
    if args.keys is not None:
        if args.dtmf is not None:
            raise LabError("--keys and --dtmf exclude each other")
        presses = parse_keys(args.keys)
        scenario = calls_dir / f"{tag}.keys.xml"
        scenario.write_text(keys_scenario(presses))
        extra = ["-key", "dtmf", presses[0][1]]
        last = presses[-1][0]
        if hangup > 0:  # the scenario's timer restarts at the last key press
            if hangup <= last:
                raise LabError(f"--hangup-after {hangup:g} comes before the last key at {last:g} s")
            limit_ms = max(100, int((hangup - last) * 1000))
    msg_log, out_log = calls_dir / f"{tag}.messages.log", calls_dir / f"{tag}.out"
    cmd = [
        "sipp",
        f"{LOCALHOST}:{SIP_PORT}",
        "-sf",
        str(scenario),
        "-s",
        args.to,
        *extra,
        "-key",
        "from",
        number,
        "-key",
        "name",
        args.name,
        "-i",
        LOCALHOST,
        "-p",
        str(port),
        "-m",
        "1",
        "-l",
        "1",
        "-recv_timeout",
        str(limit_ms),
        "-nostdin",
        "-trace_msg",
        "-message_file",
        str(msg_log),
        "-timeout",
        f"{int(limit_ms / 1000) + 60}s",
    ]
    t0 = time.monotonic()
    with open(out_log, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=calls_dir,
            start_new_session=True,
        )
    info = {
        "pid": proc.pid,
        "from": number,
        "to": args.to,
        "name": args.name,
        "port": port,
        "hangup_after": hangup,
        "messages": str(msg_log),
        "started": time.time(),
    }
    write_json(calls_dir / f"{proc.pid}.json", info)
    if args.background:
        print(proc.pid, flush=True)
        return 0
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        stop_pid(proc.pid, "sipp caller")
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            (calls_dir / f"{proc.pid}.json").unlink()
    took = time.monotonic() - t0
    s = summarize_call(msg_log)
    if s["final"] is None:
        tail = out_log.read_text(errors="replace").strip().splitlines()[-5:]
        raise LabError(
            f"call from {number} to {args.to}: no final answer from Asterisk (sipp exit {rc});"
            f" see {msg_log}\n  " + "\n  ".join(tail)
        )
    head = f"call from {number} to {args.to}:"
    if s["final"] == 200:
        who = {"caller": "the caller", "far end": "Asterisk"}.get(s["bye"] or "", "nobody (timeout)")
        log(f"{head} answered; {who} hung up; {fmt_secs(took)} in all")
    elif s["bye"] == "caller (CANCEL)":
        log(f"{head} not answered; the caller gave up (CANCEL) after {fmt_secs(took)}")
    else:
        log(f"{head} refused with {s['final']} {s['reason']} after {fmt_secs(took)}")
    return 0


KEY_GAP = 0.3  # seconds between the keys of one group, like a person typing


def parse_keys(spec: str) -> list[tuple[float, str]]:
    """``"1@2,1430@11"`` -> one (seconds after the answer, key) per key press, in time order.

    A group of several keys is pressed KEY_GAP apart, starting at its time.
    """
    presses: list[tuple[float, str]] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*([0-9*#]+)@([0-9]+(?:\.[0-9]+)?)\s*", part)
        if m is None:
            raise LabError(f"--keys wants KEYS@SECONDS[,KEYS@SECONDS...], e.g. 1@2,1430@11; got {part!r}")
        at = float(m.group(2))
        presses += [(at + i * KEY_GAP, key) for i, key in enumerate(m.group(1))]
    presses.sort()
    if len(presses) > 40:
        raise LabError("--keys: at most 40 key presses")
    return presses


def keys_scenario(presses: list[tuple[float, str]]) -> str:
    """caller-dtmf.xml with its one key press replaced by the timed presses (SIP INFO each)."""
    base = (SIPP_DIR / "caller-dtmf.xml").read_text()
    start = base.index("  <!-- Wait -d MS, then press the key. -->")
    end_tag = '<recv response="200" optional="true" ontimeout="hangup"/>'
    end = base.index(end_tag, start) + len(end_tag)
    block = base[start:end]
    info = block[block.index("  <send") :]
    steps, prev = [], 0.0
    for n, (at, key) in enumerate(presses):
        steps.append(f'  <pause milliseconds="{max(0, round((at - prev) * 1000))}"/>\n')
        press = info.replace("CSeq: 2 INFO", f"CSeq: {n + 2} INFO").replace("[dtmf]", key)
        # SIPp refuses an optional receive right before a pause: Asterisk answers every INFO.
        press = press.replace(end_tag, '<recv response="200" timeout="5000" ontimeout="hangup"/>')
        steps.append(press + "\n")
        prev = at
    out = base[:start] + "".join(steps) + base[end:]
    return out.replace("CSeq: 3 BYE", f"CSeq: {len(presses) + 2} BYE")


def prune_call_logs(keep: int = 200) -> None:
    calls_dir = state_path("calls")

    def mtime(f: Path) -> float:
        # A call placed at the same moment may prune the same file between glob and stat.
        try:
            return f.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    logs = sorted(calls_dir.glob("*.messages.log"), key=mtime)
    for f in logs[:-keep]:
        stem = f.name.replace(".messages.log", "")
        for g in (f, f.with_name(f"{stem}.out"), f.with_name(f"{stem}.keys.xml")):
            with contextlib.suppress(FileNotFoundError):
                g.unlink()
    for f in calls_dir.glob("*.json"):
        pid = read_json(f, {}).get("pid")
        if not (pid and pid_alive(pid)):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


def cmd_trace(args) -> int:
    users = {"lab": AMI_ADMIN, "callbackd": AMI_PRODUCT}
    require_up()
    ami = Ami(timeout=5)
    ami.login(*users[args.user], events="on")
    deadline = time.monotonic() + args.seconds if args.seconds else None
    n = 0
    with open(args.file, "a") as fh:
        fh.write(f"; AMI trace as {args.user}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        try:
            while deadline is None or time.monotonic() < deadline:
                ami.sock.settimeout(max(0.1, deadline - time.monotonic()) if deadline else None)
                try:
                    block = ami.read_raw()
                except TimeoutError:
                    break
                fh.write(block + "\r\n\r\n")
                fh.flush()
                n += 1
        except KeyboardInterrupt:
            pass
        except ConnectionError:
            warn("AMI connection closed")
    ami.close()
    log(f"{n} AMI messages written to {args.file}")
    return 0


def cmd_cli(args) -> int:
    require_root()
    require_up()
    root = read_json(state_path("asterisk.json"), {}).get("root")
    res = subprocess.run(["chroot", root, "/usr/sbin/asterisk", "-rx", " ".join(args.command)])
    return res.returncode


def cmd_reload(args) -> int:
    require_root()
    require_up()
    root = Path(read_json(state_path("asterisk.json"), {})["root"])
    names = copy_configs(root, current_profile())
    ami = Ami(timeout=10)
    try:
        ami.login(*AMI_ADMIN)
        resp = ami.action("Command", Command="core reload")
    finally:
        ami.close()
    if resp.get("Response") != "Success":
        raise LabError(f"core reload failed: {resp.get('Message', resp)}")
    log(f"copied {len(names)} config files and ran 'core reload' (modules.conf changes need 'up --restart')")
    return 0


def cmd_build(args) -> int:
    require_root()
    if args.rebuild and asterisk_pid():
        raise LabError("the lab is running; use 'asterisk/lab up --rebuild' (or 'down' first)")
    ensure_host_packages()
    root, took, built = ensure_chroot(rebuild=args.rebuild)
    log(f"chroot {'built' if built else 'cached'}: {root} ({fmt_secs(took)})")
    return 0
