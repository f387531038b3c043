"""The operators' phones: SIPp user agents with scripted behaviours."""

from __future__ import annotations

import os
import subprocess
import time

from labkit.layout import LOCALHOST, MORE_OPERATORS_PORT, OPERATOR_BEHAVIOURS, OPERATORS, SIPP_DIR, LabError
from labkit.procs import (
    is_our_sipp,
    operator_info,
    operator_running,
    pid_alive,
    port_free,
    port_owner,
    state_path,
    stop_pid,
    udp_port_bound,
    write_json,
)


def parse_operator_behaviour(text: str) -> tuple[str, float]:
    """'answer', 'busy', ..., or 'answer:SECONDS' (the operator hangs up SECONDS after answering)."""
    name, _, arg = text.partition(":")
    if name not in OPERATOR_BEHAVIOURS:
        raise LabError(
            f"unknown operator behaviour {text!r}; use one of {', '.join(OPERATOR_BEHAVIOURS)}"
            " or answer:SECONDS"
        )
    hangup = 0.0
    if arg:
        if name != "answer":
            raise LabError(f"only 'answer' takes a duration (answer:SECONDS), not {text!r}")
        try:
            hangup = float(arg)
        except ValueError:
            raise LabError(f"bad duration in {text!r}") from None
        if hangup < 0:
            raise LabError(f"negative duration in {text!r}")
    return name, hangup


def start_operator(name: str, behaviour_text: str, force: bool = False) -> dict:
    """(Re)start an operator's phone. A phone already running with that behaviour is left alone,
    so its calls in progress survive; a restart drops them."""
    if name not in OPERATORS:
        raise LabError(f"unknown operator {name!r}; operators: {', '.join(OPERATORS)}")
    behaviour, hangup = parse_operator_behaviour(behaviour_text)
    trace = bool(os.environ.get("CALLBACKD_LAB_SIPP_TRACE"))
    running, current = operator_running(name)
    same = current.get("behaviour") == behaviour_text and current.get("trace", False) == trace
    if same and not force and (running or behaviour == "off"):
        return current
    stop_operator(name)
    port = OPERATORS[name]
    info = {"name": name, "port": port, "behaviour": behaviour_text, "pid": None, "trace": trace}
    if behaviour == "off":
        write_json(state_path("phones", f"{name}.json"), info)
        return info
    if not port_free(port, "udp"):
        raise LabError(
            f"UDP port {port} for {name} is taken by {port_owner(port, 'udp') or 'another process'}"
        )
    extra = ["-recv_timeout", str(int(hangup * 1000))] if hangup > 0 else []
    return spawn_phone(name, port, OPERATOR_BEHAVIOURS[behaviour], info, trace, extra)


def spawn_phone(name: str, port: int, scenario: str, info: dict, trace: bool, extra: list[str]) -> dict:
    """Start one SIPp phone (``scenario`` in sipp/) on ``port``, record it in phones/NAME.json and
    wait until it has bound the port; its errors and (with ``trace``) its messages go to phones/."""
    logdir = state_path("phones")
    logdir.mkdir(parents=True, exist_ok=True)
    cmd = ["sipp", "-sf", str(SIPP_DIR / scenario), "-i", LOCALHOST, "-p", str(port), "-s", name]
    cmd += ["-nostdin", "-trace_err", "-error_file", str(logdir / f"{name}.errors.log")]
    cmd += ["-error_overwrite", "false", "-max_log_size", "10000000", "-deadcall_wait", "5000", *extra]
    if trace:
        cmd += ["-trace_msg", "-message_file", str(logdir / f"{name}.messages.log")]
        cmd += ["-message_overwrite", "false"]
    with open(logdir / f"{name}.out", "ab") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=logdir,
            start_new_session=True,
        )
    info = {**info, "pid": proc.pid, "scenario": str(SIPP_DIR / scenario)}
    write_json(state_path("phones", f"{name}.json"), info)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (logdir / f"{name}.out").read_text(errors="replace").strip().splitlines()[-5:]
            raise LabError(
                f"sipp for {name} exited at start (code {proc.returncode}):\n  " + "\n  ".join(tail)
            )
        if udp_port_bound(port):
            return info
        time.sleep(0.05)
    raise LabError(f"sipp for {name} did not bind UDP {LOCALHOST}:{port}")


def stop_operator(name: str) -> None:
    info = operator_info(name)
    pid = info.get("pid")
    if pid and pid_alive(pid) and is_our_sipp(pid):
        stop_pid(pid, f"sipp {name}", grace=3)
    # wait for the port to be released
    port = OPERATORS.get(name)
    deadline = time.monotonic() + 3
    while port and time.monotonic() < deadline and not port_free(port, "udp"):
        time.sleep(0.05)


def start_more_operators(n: int) -> dict:
    """op3..opN: one SIPp answering every INVITE at MORE_OPERATORS_PORT (it serves any number of
    calls at once, whichever endpoint they are for). Traced like op1 and op2 when
    CALLBACKD_LAB_SIPP_TRACE is set (to phones/ops.messages.log)."""
    name, port = "ops", MORE_OPERATORS_PORT
    stop_more_operators()
    if not port_free(port, "udp"):
        raise LabError(
            f"UDP port {port} for op3..op{n} is taken by {port_owner(port, 'udp') or 'another process'}"
        )
    trace = bool(os.environ.get("CALLBACKD_LAB_SIPP_TRACE"))
    info = {"name": name, "port": port, "behaviour": "answer", "operators": n, "trace": trace}
    return spawn_phone(name, port, OPERATOR_BEHAVIOURS["answer"], info, trace, [])


def stop_more_operators() -> None:
    info = operator_info("ops")
    pid = info.get("pid")
    if pid and pid_alive(pid) and is_our_sipp(pid):
        stop_pid(pid, "sipp ops", grace=3)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not port_free(MORE_OPERATORS_PORT, "udp"):
        time.sleep(0.05)
