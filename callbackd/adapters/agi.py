"""FastAGI "press 1 to be called back", on panoramisk's fast_agi.

panoramisk's own connection handler loops forever on a socket closed before
the AGI headers end, and reads headers without a size limit; :meth:`handler`
reads them with a deadline and a cap, then hands panoramisk's ``Request`` to
the async route.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

import structlog
from panoramisk.fast_agi import Application, Request

from callbackd.domain.errors import InvalidNumber
from callbackd.domain.intake import Contact, Disposition, IntakeRules, Source, decide, keyed_time
from callbackd.domain.phone import E164, parse_caller_id

log = structlog.get_logger("callbackd.agi")

ROUTE = "callback-request"
OTHER_TIME_KEY = "2"  # "press 2 to be called at another time"
MAX_HEADER_BYTES = 16384
HEADER_TIMEOUT = 5.0


@dataclass(frozen=True)
class AgiPrompts:
    """Stock Asterisk prompts; any can be replaced by a custom recording."""

    number_i_have: str = "vm-num-i-have"  # "the number I have is"
    if_correct_press: str = "if-correct-press"  # "If this is correct, press..."
    press: str = "vm-press"
    enter_number: str = "vm-enter-num-to-call"  # "please enter the number you wish to call"
    you_entered: str = "you-entered"
    stored: str = "auth-thankyou"  # "Thank you."
    # "Call me at another time": offered after the number with the key below; replace with a
    # recording such as "to be called at another time, press 2" and "enter the time, four digits".
    other_time: str = "vm-press"  # then "2" is said
    enter_time: str = "vm-enter-num-to-call"
    hours: str = "hours"
    minutes: str = "minutes"
    try_again: str = "please-try-again"
    goodbye: str = "goodbye"
    # Said when the request could be neither stored nor spooled: "I'm sorry... please try your call later".
    sorry: str = "im-sorry"
    call_later: str = "please-try-call-later"


class CallbackAgi:
    def __init__(
        self,
        submit: Callable[[Contact], Awaitable[Any]],
        rules: IntakeRules,
        prompts: AgiPrompts | None = None,
        digit_timeout_ms: int = 5000,
    ) -> None:
        self.submit = submit
        self.rules = rules
        self.prompts = prompts or AgiPrompts()
        self.digit_timeout_ms = digit_timeout_ms
        self.app = Application(loop=asyncio.get_running_loop())
        self.app.add_route(ROUTE, self.callback_request)

    # -- connection ------------------------------------------------------------------

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\n\n"), HEADER_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            log.warning("agi.bad_request", error=type(exc).__name__)
            writer.close()
            return
        lines = raw[:-2].decode("utf-8", "replace").split("\n")
        headers = OrderedDict(line.split(": ", 1) for line in lines if ": " in line)
        route = self.app._route.get(headers.get("agi_network_script", ""))
        try:
            if route is None:
                log.warning("agi.unknown_route", script=headers.get("agi_network_script", "")[:64])
            else:
                await route(Request(self.app, headers, reader, writer, encoding="utf-8"))
        except Exception:
            log.exception("agi.route_failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handler, host, port, limit=MAX_HEADER_BYTES)

    # -- the route -------------------------------------------------------------------

    async def callback_request(self, request: Request) -> None:
        """Confirm the caller's number or take another, store the request, say thank you.

        Arguments from the dialplan: 1 = the number to offer (usually ${CALLERID(num)}),
        2 = the reason (default ``ivr_request``). Sets CB_RESULT to stored, invalid,
        blocked, cancelled or failed for the dialplan to branch on. The thank-you is said
        only once the request is in the database or the spool; "failed" gets an apology.
        """
        h = request.headers
        offered = h.get("agi_arg_1") or h.get("agi_callerid", "")
        reason = _reason(h.get("agi_arg_2", ""))
        name = h.get("agi_calleridname", "")
        ref = f"{h.get('agi_uniqueid') or uuid.uuid4().hex}:{reason}"
        number = await self._confirm_or_ask(request, offered)
        if number is None:
            await self._set_result(request, "cancelled")
            await self._play(request, self.prompts.goodbye)
            return
        chosen = await self._ask_time(request)
        contact = Contact(
            source=Source.AGI,
            source_ref=ref,
            raw_number=number,
            reason=reason,
            at=datetime.now(UTC),
            name=name,
            chosen_local=chosen,
        )
        decision = decide(contact, self.rules)
        # Stored either way (a refused one as a contact, for the record); the abuse limits
        # are applied in submit, so its answer is what the caller is told.
        try:
            stored = await self.submit(contact)
        except Exception as exc:
            log.error("agi.callback_failed", error=str(exc)[:300], reason=reason)
            await self._set_result(request, "failed")
            await self._play(request, self.prompts.sorry)
            await self._play(request, self.prompts.call_later)
            return
        disposition = getattr(stored, "disposition", None) or decision.disposition
        if disposition is Disposition.SCHEDULE:
            await self._set_result(request, "stored")
            await self._play(request, self.prompts.stored)
        else:
            refused = disposition in (Disposition.BLOCKED, Disposition.RATE_LIMITED)
            await self._set_result(request, "blocked" if refused else "invalid")
            await self._play(request, self.prompts.goodbye)
        log.info(
            "agi.callback_request", result=disposition.value, reason=reason, chosen_time=chosen is not None
        )

    async def _confirm_or_ask(self, request: Request, offered: str) -> str | None:
        try:
            current = parse_caller_id(offered, self.rules.region)
        except InvalidNumber:
            current = None
        if current is not None:
            digit = await self._offer(request, self.prompts.number_i_have, current)
            if digit in ("1", ""):  # no answer: keep the caller's own number
                return str(current)
        for _ in range(2):
            entered = await self._get_data(request, self.prompts.enter_number, 15)
            try:
                number = E164.parse(entered, self.rules.region)
            except InvalidNumber:
                await self._play(request, self.prompts.try_again)
                continue
            if await self._offer(request, self.prompts.you_entered, number) == "1":
                return str(number)
        return None

    async def _ask_time(self, request: Request) -> time | None:
        """Offer "call me at another time": hours and minutes keyed in as HHMM, read back, confirmed.

        No key, or no confirmed time after two tries, means as soon as possible. The time is
        the client's local one; the store places it in the client's zone.
        """
        p = self.prompts
        digit = _digit(await request.send_command(f'STREAM FILE {p.other_time} "12"'))
        if not digit:
            digit = _digit(await request.send_command('SAY DIGITS 2 "12"'))
        if not digit:
            digit = _digit(await request.send_command(f"WAIT FOR DIGIT {self.digit_timeout_ms}"))
        if digit != OTHER_TIME_KEY:
            return None
        for _ in range(2):
            chosen = keyed_time(await self._get_data(request, p.enter_time, 4))
            if chosen is None:
                await self._play(request, p.try_again)
                continue
            for cmd in (
                f'STREAM FILE {p.you_entered} "12"',
                f'SAY NUMBER {chosen.hour} "12"',
                f'STREAM FILE {p.hours} "12"',
                f'SAY NUMBER {chosen.minute} "12"',
                f'STREAM FILE {p.minutes} "12"',
                f'STREAM FILE {p.if_correct_press} "12"',
                'SAY DIGITS 1 "12"',
            ):
                digit = _digit(await request.send_command(cmd))
                if digit:
                    break
            else:
                digit = _digit(await request.send_command(f"WAIT FOR DIGIT {self.digit_timeout_ms}"))
            if digit == "1":
                return chosen
        return None

    async def _offer(self, request: Request, intro: str, number: E164) -> str:
        """Say the number and ask for 1 to confirm; returns the digit pressed ('' for none)."""
        p = self.prompts
        for cmd in (
            f'STREAM FILE {intro} "12"',
            f'SAY DIGITS {number.digits} "12"',
            f'STREAM FILE {p.if_correct_press} "12"',
            'SAY DIGITS 1 "12"',
        ):
            digit = _digit(await request.send_command(cmd))
            if digit:
                return digit
        return _digit(await request.send_command(f"WAIT FOR DIGIT {self.digit_timeout_ms}"))

    async def _get_data(self, request: Request, prompt: str, max_digits: int) -> str:
        res = await request.send_command(f"GET DATA {prompt} 10000 {max_digits}")
        value = str(res.get("result", ("", ""))[0])
        return value if value.isdigit() else ""

    async def _play(self, request: Request, prompt: str) -> None:
        await request.send_command(f'STREAM FILE {prompt} ""')

    async def _set_result(self, request: Request, value: str) -> None:
        await request.send_command(f"SET VARIABLE CB_RESULT {value}")


def _digit(res: dict[str, Any]) -> str:
    """AGI returns the pressed key as its ASCII code; 0 means none."""
    try:
        code = int(res.get("result", ("0", ""))[0])
    except (TypeError, ValueError):
        return ""
    return chr(code) if 48 <= code <= 57 else ""


def _reason(raw: str) -> str:
    raw = raw.strip().lower()
    return raw if raw in ("ivr_request", "queue_press1", "after_hours") else "ivr_request"
