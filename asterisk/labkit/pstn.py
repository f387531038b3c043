"""The PSTN: per-number scripts and the small SIP responder that plays the clients."""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import os
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

from labkit.layout import (
    HERE,
    LOCALHOST,
    PSTN_BEHAVIOURS,
    PSTN_DEFAULT_BY_LAST_DIGIT,
    PSTN_DEFAULT_RING,
    PSTN_DEFAULT_TALK,
    PSTN_NOANSWER_CAP,
    PSTN_PORT,
    PSTN_TALK_CAP,
    STATE_DIR,
    LabError,
)
from labkit.procs import file_lock, port_free, port_owner, read_json, state_path, udp_port_bound, write_json


def pstn_state_file() -> Path:
    return state_path("pstn.json")


def pstn_lock():
    return file_lock(state_path("pstn.lock"))


def pstn_default_state() -> dict:
    return {"talk": PSTN_DEFAULT_TALK, "ring": PSTN_DEFAULT_RING, "scripts": {}, "seen": {}}


def pstn_load() -> dict:
    st = read_json(pstn_state_file(), None) or pstn_default_state()
    for k, v in pstn_default_state().items():
        st.setdefault(k, v)
    return st


def number_key(number: str) -> str:
    """Clients are compared by their last 10 digits: +15551230001, 15551230001 and 5551230001 match."""
    digits = re.sub(r"\D", "", number)
    return digits[-10:]


def parse_pstn_item(item: str) -> str:
    name, _, arg = item.strip().partition(":")
    name = name.strip().lower()
    if name not in PSTN_BEHAVIOURS:
        raise LabError(f"unknown PSTN behaviour {item!r}; use {', '.join(PSTN_BEHAVIOURS)} (answer:SECONDS)")
    if arg:
        if name != "answer":
            raise LabError(f"only 'answer' takes a talk time (answer:SECONDS), not {item!r}")
        try:
            if float(arg) < 0:
                raise ValueError
        except ValueError:
            raise LabError(f"bad talk time in {item!r}") from None
        return f"answer:{arg}"
    return name


def pstn_default_behaviour(number: str) -> str:
    digits = re.sub(r"\D", "", number)
    return PSTN_DEFAULT_BY_LAST_DIGIT.get(digits[-1:], "answer") if digits else "unallocated"


def pstn_pick(number: str) -> tuple[str, int, str]:
    """Behaviour for the next call to number: (behaviour, attempt number, source)."""
    key = number_key(number)
    with pstn_lock():
        st = pstn_load()
        seen = st["seen"].get(key, 0) + 1
        st["seen"][key] = seen
        script = st["scripts"].get(key)
        if script and script.get("items"):
            i = script.get("calls", 0)
            script["calls"] = i + 1
            items = script["items"]
            behaviour, source = items[min(i, len(items) - 1)], f"script {','.join(items)}"
        else:
            behaviour, source = pstn_default_behaviour(number), "last digit"
        write_json(pstn_state_file(), st)
        return behaviour, seen, source


COMPACT = {
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "t": "to",
    "v": "via",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
}


T1, T2 = 0.5, 4.0

FRAME_S = 0.02  # one RTP packet: 20 ms, 160 samples at 8 kHz
# What a talking client sends once the call is confirmed: (seconds of voice, seconds of silence).
SPEECH = {"human": (0.6, 3.0), "machine": (4.0, 1.0)}


def ulaw(sample: int) -> int:
    """G.711 mu-law of one 16-bit sample (the standard bias-and-segment encoding)."""
    sign = 0x80 if sample < 0 else 0
    mag = min(abs(sample), 32635) + 0x84
    exponent = min(7, mag.bit_length() - 8)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


# 400 Hz is 8 whole periods per frame, so frames join without a click; loud enough for AMD's
# silence threshold (256), like a voice.
VOICE_FRAME = bytes(ulaw(int(8000 * math.sin(2 * math.pi * 400 * i / 8000))) for i in range(160))
SILENCE_FRAME = bytes([ulaw(0)]) * 160


def rtp_target(offer: bytes) -> tuple[str, int] | None:
    """Where Asterisk wants our audio: the c= address and m=audio port of its SDP offer."""
    host, port = None, None
    for line in offer.decode(errors="replace").splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[2]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    return (host, port) if host and port else None


class SipMsg:
    def __init__(self, first: str, headers: list[tuple[str, str]], body: bytes):
        self.first = first
        self.headers = headers
        self.body = body
        parts = first.split(" ", 2)
        self.is_request = not first.startswith("SIP/2.0")
        if self.is_request:
            self.method, self.uri = parts[0].upper(), parts[1] if len(parts) > 1 else ""
            self.status = 0
        else:
            self.method, self.uri = "", ""
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

    @classmethod
    def parse(cls, data: bytes) -> SipMsg | None:
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = data.partition(b"\n\n")
        lines = head.decode(errors="replace").replace("\r\n", "\n").split("\n")
        if not lines or not lines[0].strip():
            return None
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:
                headers[-1] = (headers[-1][0], headers[-1][1] + " " + line.strip())
            elif ":" in line:
                k, v = line.split(":", 1)
                k = k.strip()
                headers.append((COMPACT.get(k.lower(), k.lower()), v.strip()))
        return cls(lines[0].strip(), headers, body)

    def get(self, name: str) -> str:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return ""

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def call_id(self) -> str:
        return self.get("call-id")

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = self.get("cseq").partition(" ")
        return (int(num) if num.isdigit() else 0), method.strip().upper()


def uri_of(header_value: str) -> str:
    m = re.search(r"<([^>]+)>", header_value)
    return m.group(1) if m else header_value.split(";")[0].strip()


def uri_user(uri: str) -> str:
    m = re.match(r"sips?:([^@;>]+)@", uri)
    return unquote(m.group(1)) if m else ""


def has_tag(header_value: str) -> bool:
    return re.search(r";\s*tag=", header_value.split(">")[-1]) is not None


def new_tag() -> str:
    return f"{random.getrandbits(32):08x}"


def new_branch() -> str:
    return f"z9hG4bK-lab-{random.getrandbits(48):012x}"


class PstnCall:
    def __init__(self, invite: SipMsg, addr, number: str):
        self.invite = invite
        self.addr = addr
        self.number = number
        self.call_id = invite.call_id
        self.to_tag = new_tag()
        self.final_code = 0
        self.last_response = b""
        self.state = "proceeding"  # proceeding, answered, confirmed, ending, done
        self.gen = 0  # bumps to invalidate scheduled timers
        self.bye = b""
        self.local_cseq = random.randint(100, 9000)
        self.behaviour = ""
        self.attempt = 0
        self.talk = 0.0
        self.sdp = b""
        self.ssrc = random.getrandbits(32)


class PstnServer:
    def __init__(self, port: int = PSTN_PORT):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, port))
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.media.bind((LOCALHOST, 0))  # one sink for all RTP sent to "clients"
        self.media_port = self.media.getsockname()[1]
        self.port = port
        self.calls: dict[str, PstnCall] = {}
        self.timers: list = []
        self.seq = 0
        self.running = True
        self.calls_log = state_path("pstn-calls.log")

    # ---- plumbing
    def at(self, delay: float, fn, *args) -> None:
        self.seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self.seq, fn, args))

    def send(self, data: bytes, addr) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(data, addr)

    def record(self, call: PstnCall, event: str, **extra) -> None:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
            + f".{int(time.time() % 1 * 1000):03d}",
            "number": call.number,
            "attempt": call.attempt,
            "behaviour": call.behaviour,
            "event": event,
            "call_id": call.call_id,
            **extra,
        }
        with contextlib.suppress(OSError), open(self.calls_log, "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def response(
        self,
        req: SipMsg,
        code: int,
        reason: str,
        call: PstnCall | None = None,
        body: bytes = b"",
        extra: list[str] | None = None,
    ) -> bytes:
        lines = [f"SIP/2.0 {code} {reason}"]
        lines += [f"Via: {v}" for v in req.get_all("via")]
        lines.append(f"From: {req.get('from')}")
        to = req.get("to")
        if call and not has_tag(to) and code != 100:
            to += f";tag={call.to_tag}"
        lines.append(f"To: {to}")
        lines.append(f"Call-ID: {req.call_id}")
        lines.append(f"CSeq: {req.get('cseq')}")
        if call and 100 < code < 300:
            lines.append(f"Contact: <sip:{call.number}@{LOCALHOST}:{self.port}>")
        lines.append("Server: callbackd-lab-pstn")
        if code == 200 and req.method in ("INVITE", "OPTIONS"):
            lines.append("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO")
        lines += extra or []
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def sdp_answer(self, offer: bytes) -> bytes:
        pts = []
        for line in offer.decode(errors="replace").splitlines():
            if line.startswith("m=audio"):
                pts = line.split()[3:]
        pt = "0" if "0" in pts or not pts else ("8" if "8" in pts else pts[0])
        codec = {"0": "PCMU/8000", "8": "PCMA/8000"}.get(pt, "PCMU/8000")
        sess = random.randint(1000000, 9999999)
        lines = [
            "v=0",
            f"o=pstn {sess} {sess} IN IP4 {LOCALHOST}",
            "s=lab-pstn",
            f"c=IN IP4 {LOCALHOST}",
            "t=0 0",
            f"m=audio {self.media_port} RTP/AVP {pt}",
            f"a=rtpmap:{pt} {codec}",
            "a=sendrecv",
        ]
        return ("\r\n".join(lines) + "\r\n").encode()

    # ---- final responses with retransmission until ACK (RFC 3261 timers G/H)
    def send_final(self, call: PstnCall, code: int, reason: str, body: bytes = b"") -> None:
        call.final_code = code
        call.last_response = self.response(call.invite, code, reason, call, body=body)
        self.send(call.last_response, call.addr)
        call.gen += 1
        self.at(T1, self.retransmit_final, call, call.gen, T1, time.monotonic() + 64 * T1)

    def retransmit_final(self, call: PstnCall, gen: int, interval: float, give_up: float) -> None:
        if call.gen != gen or call.state in ("confirmed", "ending", "done") or call.final_code == 0:
            return
        if time.monotonic() >= give_up:
            self.record(call, "no-ack")
            if call.final_code == 200:
                self.send_bye(call, "no ACK")
            else:
                self.finish(call)
            return
        self.send(call.last_response, call.addr)
        interval = min(interval * 2, T2)
        self.at(interval, self.retransmit_final, call, gen, interval, give_up)

    # ---- call flow
    def on_invite(self, req: SipMsg, addr) -> None:
        if has_tag(req.get("to")):  # re-INVITE inside a dialog
            call = self.calls.get(req.call_id)
            if not call:
                self.send(self.response(req, 481, "Call/Transaction Does Not Exist"), addr)
                return
            self.send(self.response(req, 200, "OK", call, body=call.sdp or self.sdp_answer(req.body)), addr)
            return
        call = self.calls.get(req.call_id)
        if call:  # retransmission of the INVITE
            if call.last_response:
                self.send(call.last_response, addr)
            return
        number = uri_user(req.uri) or uri_user(uri_of(req.get("to")))
        call = PstnCall(req, addr, number)
        self.calls[req.call_id] = call
        self.send(self.response(req, 100, "Trying"), addr)
        try:
            behaviour, attempt, source = pstn_pick(number)
            st = pstn_load()
        except Exception as e:  # never leave Asterisk without an answer
            behaviour, attempt, source, st = "congestion", 0, f"error: {e}", pstn_default_state()
        call.behaviour, call.attempt = behaviour, attempt
        name, _, arg = behaviour.partition(":")
        call.talk = float(arg) if arg else float(st.get("talk", PSTN_DEFAULT_TALK))
        self.record(
            call,
            "invite",
            source=source,
            src=f"{addr[0]}:{addr[1]}",
            caller=uri_user(uri_of(req.get("from"))),
        )
        if name in ("answer", "human", "machine"):
            self.send_provisional(call, 180, "Ringing")
            self.at(float(st.get("ring", PSTN_DEFAULT_RING)), self.answer, call, call.gen)
        elif name == "noanswer":
            self.send_provisional(call, 180, "Ringing")
            self.at(PSTN_NOANSWER_CAP, self.give_up_ringing, call, call.gen)
        else:
            code, reason = PSTN_BEHAVIOURS[name]
            self.send_final(call, code, reason)
            self.record(call, "rejected", code=code)

    def send_provisional(self, call: PstnCall, code: int, reason: str) -> None:
        call.last_response = self.response(call.invite, code, reason, call)
        self.send(call.last_response, call.addr)

    def answer(self, call: PstnCall, gen: int) -> None:
        if call.gen != gen or call.state != "proceeding":
            return
        call.state = "answered"
        call.sdp = self.sdp_answer(call.invite.body)
        self.send_final(call, 200, "OK", body=call.sdp)
        self.record(call, "answered")

    def give_up_ringing(self, call: PstnCall, gen: int) -> None:
        if call.gen != gen or call.state != "proceeding":
            return
        self.send_final(call, 480, "Temporarily Unavailable")
        self.record(call, "ring-timeout")

    def on_ack(self, req: SipMsg) -> None:
        call = self.calls.get(req.call_id)
        if not call:
            return
        if call.final_code == 200 and call.state == "answered":
            call.state = "confirmed"
            call.gen += 1
            talk = call.talk if call.talk > 0 else PSTN_TALK_CAP
            if call.behaviour in SPEECH:
                voice, quiet = SPEECH[call.behaviour]
                talk = max(talk, voice + quiet)
                target = rtp_target(call.invite.body)
                if target is not None:
                    self.record(call, "speaks", seconds=voice)
                    self.talk_frame(call, call.gen, target, 0, round(voice / FRAME_S), round(talk / FRAME_S))
            self.at(talk, self.hang_up, call, call.gen)
        elif call.final_code >= 300 and call.state == "proceeding":
            call.gen += 1
            self.finish(call)

    def talk_frame(self, call: PstnCall, gen: int, target, n: int, voiced: int, total: int) -> None:
        """Send RTP frame n (voice for the first ``voiced`` frames, then silence) and schedule the next."""
        if call.gen != gen or call.state != "confirmed" or n >= total:
            return
        header = struct.pack("!BBHII", 0x80, 0x80 if n == 0 else 0, n & 0xFFFF, n * 160, call.ssrc)
        with contextlib.suppress(OSError):
            self.media.sendto(header + (VOICE_FRAME if n < voiced else SILENCE_FRAME), target)
        self.at(FRAME_S, self.talk_frame, call, gen, target, n + 1, voiced, total)

    def hang_up(self, call: PstnCall, gen: int) -> None:
        if call.gen == gen and call.state == "confirmed":
            self.send_bye(call, "talk time over")

    def send_bye(self, call: PstnCall, why: str) -> None:
        call.state = "ending"
        call.gen += 1
        inv = call.invite
        call.local_cseq += 1
        target = uri_of(inv.get("contact")) or uri_of(inv.get("from"))
        lines = [
            f"BYE {target} SIP/2.0",
            f"Via: SIP/2.0/UDP {LOCALHOST}:{self.port};branch={new_branch()};rport",
            "Max-Forwards: 70",
            f"From: {inv.get('to')};tag={call.to_tag}",
            f"To: {inv.get('from')}",
            f"Call-ID: {call.call_id}",
            f"CSeq: {call.local_cseq} BYE",
        ]
        for rr in inv.get_all("record-route"):
            lines.append(f"Route: {rr}")
        lines += ["Reason: Q.850;cause=16", "User-Agent: callbackd-lab-pstn", "Content-Length: 0"]
        call.bye = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.send(call.bye, call.addr)
        self.record(call, "bye-sent", reason=why)
        self.at(T1, self.retransmit_bye, call, call.gen, T1, time.monotonic() + 64 * T1)

    def retransmit_bye(self, call: PstnCall, gen: int, interval: float, give_up: float) -> None:
        if call.gen != gen or call.state != "ending":
            return
        if time.monotonic() >= give_up:
            self.finish(call)
            return
        self.send(call.bye, call.addr)
        interval = min(interval * 2, T2)
        self.at(interval, self.retransmit_bye, call, gen, interval, give_up)

    def on_cancel(self, req: SipMsg, addr) -> None:
        call = self.calls.get(req.call_id)
        if not call:
            self.send(self.response(req, 481, "Call/Transaction Does Not Exist"), addr)
            return
        self.send(self.response(req, 200, "OK", call), addr)
        if call.state == "proceeding" and call.final_code == 0:
            call.gen += 1
            self.send_final(call, 487, "Request Terminated")
            self.record(call, "cancelled")

    def on_bye(self, req: SipMsg, addr) -> None:
        call = self.calls.get(req.call_id)
        self.send(self.response(req, 200, "OK", call), addr)
        if call and call.state != "done":
            self.record(call, "bye-received")
            call.gen += 1
            self.finish(call)

    def on_response(self, resp: SipMsg) -> None:
        call = self.calls.get(resp.call_id)
        if call and resp.cseq[1] == "BYE" and resp.status >= 200 and call.state == "ending":
            call.gen += 1
            self.finish(call)

    def finish(self, call: PstnCall) -> None:
        call.state = "done"
        # keep the call for a while to absorb retransmissions, then forget it
        self.at(32.0, self.forget, call.call_id, call)

    def forget(self, call_id: str, call: PstnCall) -> None:
        if self.calls.get(call_id) is call and call.state == "done":
            del self.calls[call_id]

    def handle(self, data: bytes, addr) -> None:
        if not data.strip():
            return  # keep-alive
        msg = SipMsg.parse(data)
        if msg is None:
            return
        if not msg.is_request:
            self.on_response(msg)
            return
        m = msg.method
        if m == "INVITE":
            self.on_invite(msg, addr)
        elif m == "ACK":
            self.on_ack(msg)
        elif m == "CANCEL":
            self.on_cancel(msg, addr)
        elif m == "BYE":
            self.on_bye(msg, addr)
        elif m in ("OPTIONS", "UPDATE", "INFO", "NOTIFY"):
            self.send(self.response(msg, 200, "OK", self.calls.get(msg.call_id)), addr)
        else:
            self.send(self.response(msg, 501, "Not Implemented"), addr)

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "sip")
        sel.register(self.media, selectors.EVENT_READ, "media")
        while self.running:
            now = time.monotonic()
            timeout = min(1.0, max(0.0, self.timers[0][0] - now)) if self.timers else 1.0
            for key, _ in sel.select(timeout):
                try:
                    data, addr = key.fileobj.recvfrom(65535)
                except OSError:
                    continue
                if key.data == "sip":
                    try:
                        self.handle(data, addr)
                    except Exception as e:  # keep serving; note the problem
                        print(f"error handling message from {addr}: {e!r}", file=sys.stderr, flush=True)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn, args = heapq.heappop(self.timers)
                try:
                    fn(*args)
                except Exception as e:
                    print(f"timer error: {e!r}", file=sys.stderr, flush=True)


def cmd_pstn_serve(args) -> int:
    server = PstnServer(args.port)

    def stop(*_):
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"pstn responder on {LOCALHOST}:{server.port}, media sink {server.media_port}", flush=True)
    server.serve()
    return 0


def start_pstn() -> int:
    if not port_free(PSTN_PORT, "udp"):
        raise LabError(
            f"UDP port {PSTN_PORT} for the PSTN responder is taken by "
            f"{port_owner(PSTN_PORT, 'udp') or 'another process'}"
        )
    out = state_path("pstn-server.out")
    with open(out, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "lab"), "_pstn-serve"],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, CALLBACKD_LAB_STATE=str(STATE_DIR)),
        )
    write_json(state_path("pstn-server.json"), {"pid": proc.pid, "port": PSTN_PORT})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"PSTN responder exited at start (code {proc.returncode}); see {out}")
        if udp_port_bound(PSTN_PORT):
            return proc.pid
        time.sleep(0.05)
    raise LabError(f"PSTN responder did not bind UDP {LOCALHOST}:{PSTN_PORT}; see {out}")
