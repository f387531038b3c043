"""Configuration: one TOML file, validated by pydantic, secrets kept out of logs.

Errors name the key path and the reason, so ``callbackd check-config`` can print
them as they are.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_PATH = Path("/etc/callbackd/callbackd.toml")
ENV_PATH = "CALLBACKD_CONFIG"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def _duration(value: Any) -> Any:
    """Accept 90, "90s", "15m", "1h", "3d" (and ISO 8601 via pydantic); a length no date can
    hold (timedelta's limit, about 2.7 million years) is a plain ValueError, not a crash."""
    try:
        if isinstance(value, str):
            m = _DURATION.match(value)
            if m:
                return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
        if isinstance(value, int | float) and not isinstance(value, bool):
            return timedelta(seconds=value)
    except (OverflowError, ValueError):  # ValueError: nan
        raise ValueError("duration too long (or not a number)") from None
    return value


def _bounded(value: timedelta) -> timedelta:
    """Dates are added to durations everywhere: a century is past any sane setting and keeps
    every sum inside the calendar (year 9999)."""
    if abs(value) > _LONGEST:
        raise ValueError("duration longer than 100 years")
    return value


_LONGEST = timedelta(days=36525)
Duration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_bounded)]
_PROMPT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_/\-]{0,79}$")
_INTERFACE = re.compile(r"^[A-Za-z0-9]+/[A-Za-z0-9_.@\-]+$")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message lists every problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AmiConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(5038, ge=1, le=65535)
    username: str = "callbackd"
    secret: SecretStr | None = None
    secret_file: Path | None = None
    connect_timeout: Duration = timedelta(seconds=5)
    # The watchdog pings this often and reconnects when no reply comes in ping_timeout.
    ping_interval: Duration = timedelta(seconds=10)
    ping_timeout: Duration = timedelta(seconds=5)
    reconnect_max: Duration = timedelta(seconds=30)


class DatabaseConfig(_Section):
    url: str = "sqlite+aiosqlite:////var/lib/callbackd/callbackd.db"

    @field_validator("url")
    @classmethod
    def _async_driver(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return v


class NumbersConfig(_Section):
    default_region: str = Field("US", min_length=2, max_length=2)
    blacklist: list[str] = []
    blocked_prefixes: list[str] = []
    allowed_prefixes: list[str] = []

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        import phonenumbers

        v = v.upper()
        if v not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {v!r}; use an ISO 3166 code such as US, GB, DE, RU")
        return v

    @field_validator("blacklist")
    @classmethod
    def _numbers(cls, v: list[str]) -> list[str]:
        from callbackd.domain.errors import InvalidNumber
        from callbackd.domain.phone import E164

        for n in v:
            try:
                E164.trusted(n)
            except InvalidNumber:
                raise ValueError(f"{n!r} must be an E.164 number such as +12025550123") from None
        return v

    @field_validator("blocked_prefixes", "allowed_prefixes")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        for p in v:
            if not re.fullmatch(r"\+[0-9]{1,15}", p):
                raise ValueError(f"prefix {p!r} must be '+' and digits, e.g. +1900")
        return v


class DetectionConfig(_Section):
    inbound_contexts: list[str] = ["from-pstn"]
    queues: list[str] = []
    dids: list[str] = []
    own_numbers: list[str] = []
    # Contexts operators dial out from; an answered call to a client closes its request.
    outbound_contexts: list[str] = ["from-internal"]
    internal_max_digits: int = Field(5, ge=0, le=10)
    short_abandon: Duration = timedelta(seconds=5)


_QUEUE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _check_queue(v: str) -> str:
    if not _QUEUE.fullmatch(v):
        raise ValueError(f"queue {v!r} must be a queue name as Asterisk has it (letters, digits, _ . -)")
    return v


QueueName = Annotated[str, AfterValidator(_check_queue)]


class QueueDialConfig(_Section):
    """``[dialer.by_queue.<queue>]``: how callbacks for clients of one queue are made."""

    # Served queues whose free members take these callbacks when the queue has none, in order.
    fallback: list[QueueName] = []
    # Replace the [dialer] values for this queue's callbacks (callerid_by_did still wins for its DIDs).
    outbound_callerid: str | None = None
    whisper_intro: list[str] | None = None
    whisper_custom: list[str] | None = None

    @field_validator("outbound_callerid")
    @classmethod
    def _callerid(cls, v: str | None) -> str | None:
        return v if v is None else DialerConfig._callerid(v)

    @field_validator("whisper_intro", "whisper_custom")
    @classmethod
    def _prompts(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else DialerConfig._prompts(v)


class DialerConfig(_Section):
    # Queues whose members are the operators who take callbacks. A callback goes to a free
    # member of the queue its client called (then that queue's fall-backs); a request with no
    # served queue (a web lead without a mapped source) goes to any of them.
    queues: list[QueueName] = ["support"]
    by_queue: dict[QueueName, QueueDialConfig] = {}
    # Web leads: the queue of a form's ``source``, e.g. {"site-sales" = "sales"}.
    source_queues: dict[str, QueueName] = {}
    context: str = "callbackd-bridge"
    # {number} is replaced by the client's E.164 number (+ and digits only).
    dial_pattern: str = "PJSIP/{number}@trunk"
    # When set, replaces dial_pattern: the client leg through the PBX's own routing, e.g.
    # "Local/{national}@from-internal" (FreePBX outbound routes) or "PJSIP/{e164}@trunk";
    # one of {e164} {national} {digits} {international}. See domain/dialtarget.py.
    client_target: str = ""
    # Home country for {national} and {international}; "" means numbers.default_region.
    client_region: str = ""
    outbound_callerid: str = ""
    # The caller ID a callback presents, by the number the client dialled; others get outbound_callerid.
    callerid_by_did: dict[str, str] = {}
    operator_ring: Duration = timedelta(seconds=20)
    client_ring: Duration = timedelta(seconds=30)
    max_concurrent: int = Field(2, ge=1, le=500)
    # Operators to try for one client attempt before it waits for the next round.
    operator_tries: int = Field(3, ge=1, le=20)
    operator_retry_delay: Duration = timedelta(seconds=30)
    hold_while_callers_wait: bool = True
    wrapup: Duration = timedelta(seconds=0)
    # Stock prompts: "Information about your last call." then the reason, then SayDigits(try).
    whisper_intro: list[str] = ["beep", "info-about-last-call"]
    whisper_reasons: dict[str, list[str]] = {
        "queue_abandon": ["queue-callswaiting"],
        "queue_timeout": ["queue-callswaiting"],
        "no_answer": ["number-not-answering"],
    }
    whisper_custom: list[str] = []
    # Answering-machine detection on the client leg (Asterisk's AMD(), app_amd loaded; amd.conf
    # tunes it). A machine is hung up before the operator is bridged and counts as "voicemail".
    amd: bool = False
    # How often the dialer looks for due requests when nothing wakes it earlier.
    poll_interval: Duration = timedelta(seconds=2)

    @field_validator("dial_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if v.count("{number}") != 1:
            raise ValueError("must contain {number} exactly once, e.g. PJSIP/{number}@trunk")
        rest = v.replace("{number}", "")
        if re.search(r"[&,;\s${}()|\\]", rest) or not re.fullmatch(r"[A-Za-z0-9_./@:+\-]+", rest):
            raise ValueError("may hold only letters, digits and _ . / @ : + - around {number}")
        return v

    @field_validator("client_target")
    @classmethod
    def _target(cls, v: str) -> str:
        from callbackd.domain.dialtarget import DialTarget

        if v:
            DialTarget(v)
        return v

    @field_validator("client_region")
    @classmethod
    def _client_region(cls, v: str) -> str:
        return NumbersConfig._region(v) if v else v

    @model_validator(mode="after")
    def _routes(self) -> DialerConfig:
        for queue, opts in self.by_queue.items():
            unknown = [q for q in (queue, *opts.fallback) if q not in self.queues]
            if unknown:
                raise ValueError(
                    f"by_queue.{queue}: {', '.join(unknown)} not in dialer.queues; only served queues"
                    " have their members watched"
                )
        for source in self.source_queues:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,32}", source):
                raise ValueError(f"source_queues: {source!r} is not a form source (letters, digits, _ . -)")
        return self

    def routes(self):
        from callbackd.domain.routing import Routes

        return Routes(
            tuple(self.queues), {q: tuple(o.fallback) for q, o in self.by_queue.items() if o.fallback}
        )

    def for_queue(self, queue: str | None) -> QueueDialConfig:
        return self.by_queue.get(queue or "", _NO_OVERRIDES)

    def client_dial_target(self):
        """The checked client dial template, or None to use dial_pattern."""
        from callbackd.domain.dialtarget import DialTarget

        return DialTarget(self.client_target, self.client_region or "US") if self.client_target else None

    @field_validator("whisper_intro", "whisper_custom")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        for p in v:
            if not _PROMPT.match(p):
                raise ValueError(f"prompt {p!r} must be a sound file name like 'beep' or 'custom/cb-intro'")
        return v

    @field_validator("whisper_reasons")
    @classmethod
    def _reason_prompts(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for prompts in v.values():
            cls._prompts(prompts)
        return v

    @field_validator("outbound_callerid")
    @classmethod
    def _callerid(cls, v: str) -> str:
        if v and not re.fullmatch(r'(?:"[A-Za-z0-9 ._\-]{0,40}"\s*)?<?\+?[0-9]{2,16}>?', v):
            raise ValueError('use "Company" <+15550000000> or a bare number')
        return v

    @field_validator("callerid_by_did")
    @classmethod
    def _callerids(cls, v: dict[str, str]) -> dict[str, str]:
        for did, callerid in v.items():
            if not re.fullmatch(r"\+?[0-9A-Za-z_*#-]{1,64}", did):
                raise ValueError(
                    f"DID {did!r} must be the dialled number as Asterisk sees it, e.g. +12025550100"
                )
            if not callerid:
                raise ValueError(f"{did}: give a caller ID")
            try:
                cls._callerid(callerid)
            except ValueError as exc:
                raise ValueError(f"{did}: {exc}") from None
        return v


_NO_OVERRIDES = QueueDialConfig()


class ClientHoursConfig(_Section):
    """The client's own local hours, laid over the business hours for every call."""

    enabled: bool = True
    hours: dict[str, str | list[str]] = {"mon-sun": "09:00-21:00"}
    # Number ranges whose zone phonenumbers cannot tell (most mobiles), longest prefix first:
    # {"+7914" = ["Asia/Vladivostok"]}. A range with several zones uses the hours common to all.
    zones: dict[str, list[str]] = {}

    @field_validator("zones")
    @classmethod
    def _zones(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        from callbackd.domain.phone import check_zone

        for prefix, zones in v.items():
            if not re.fullmatch(r"\+[0-9]{1,15}", prefix):
                raise ValueError(f"prefix {prefix!r} must be '+' and digits, e.g. +7914")
            if not zones:
                raise ValueError(f"{prefix}: give at least one time zone")
            for zone in zones:
                check_zone(zone)
        return v


OutcomeName = Literal["busy", "congestion", "no_answer", "unavailable", "voicemail", "unknown"]
# Config names to Outcome values.
OUTCOME_KEYS = {
    "busy": "client_busy",
    "congestion": "client_congestion",
    "no_answer": "client_no_answer",
    "unavailable": "client_unavailable",
    "voicemail": "voicemail",
    "unknown": "unknown",
}


class QueueLadderConfig(_Section):
    """``[schedule.queues.<queue>]``: a queue's own ladder and business hours."""

    # Replace [schedule] hours and holidays for this queue's callbacks (e.g. sales open on Saturday).
    hours: dict[str, str | list[str]] | None = None
    holidays: list[str] | None = None
    delays: list[Duration] | None = None
    max_attempts: int | None = Field(None, ge=1, le=10)
    outcome_delays: dict[OutcomeName, Duration | Literal["ladder"]] | None = None


def _outcome_delays(d: dict[str, Any]) -> dict[str, timedelta]:
    return {OUTCOME_KEYS[k]: v for k, v in d.items() if isinstance(v, timedelta)}


class ScheduleConfig(_Section):
    timezone: str = "UTC"
    hours: dict[str, str | list[str]] = {"mon-fri": ["09:00-18:00"]}
    holidays: list[str] = []
    delays: list[Duration] = [timedelta(hours=1), timedelta(hours=3), timedelta(hours=6)]
    max_attempts: int = Field(5, ge=1, le=10)
    max_age: Duration = timedelta(days=7)
    opening_spread: Duration = timedelta(minutes=5)
    # The wait after these outcomes instead of the ladder's rung; "ladder" keeps the rung.
    outcome_delays: dict[OutcomeName, Duration | Literal["ladder"]] = {
        "busy": timedelta(minutes=10),
        "congestion": timedelta(minutes=2),
        "no_answer": "ladder",
        "voicemail": "ladder",
    }
    client: ClientHoursConfig = ClientHoursConfig()
    # Per-queue ladders, e.g. [schedule.queues.sales] delays = ["15m"] max_attempts = 8; applied to a
    # request once it carries its queue.
    queues: dict[str, QueueLadderConfig] = {}

    @model_validator(mode="after")
    def _buildable(self) -> ScheduleConfig:
        from callbackd.domain.errors import DomainError

        try:
            build_schedule(self)
        except (DomainError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        return self


def build_calendar(s: ScheduleConfig):
    from callbackd.domain.calendar import BusinessCalendar

    return BusinessCalendar.from_spec(s.timezone, s.hours, s.holidays)


def build_schedule(s: ScheduleConfig):
    from callbackd.domain.calendar import ClientWindow
    from callbackd.domain.ladder import RetryLadder, Schedule

    ladder = RetryLadder(
        delays=tuple(s.delays), max_attempts=s.max_attempts, outcome_delays=_outcome_delays(s.outcome_delays)
    )
    queue_ladders = {
        name: RetryLadder(
            delays=tuple(q.delays if q.delays is not None else s.delays),
            max_attempts=q.max_attempts or s.max_attempts,
            outcome_delays=_outcome_delays(
                q.outcome_delays if q.outcome_delays is not None else s.outcome_delays
            ),
        )
        for name, q in s.queues.items()
    }
    from callbackd.domain.calendar import BusinessCalendar

    queue_calendars = {
        name: BusinessCalendar.from_spec(
            s.timezone,
            q.hours if q.hours is not None else s.hours,
            q.holidays if q.holidays is not None else s.holidays,
        )
        for name, q in s.queues.items()
        if q.hours is not None or q.holidays is not None
    }
    return Schedule(
        queue_calendars=queue_calendars,
        queue_ladders=queue_ladders,
        ladder=ladder,
        calendar=build_calendar(s),
        max_age=s.max_age,
        opening_spread=s.opening_spread,
        client_window=ClientWindow.from_spec(s.client.hours) if s.client.enabled else None,
        zone_prefixes={p: tuple(z) for p, z in s.client.zones.items()},
    )


class LimitsConfig(_Section):
    """Abuse limits on new requests and on dial attempts; 0 turns one off.

    Counted in memory by each daemon, so they reset on restart and each node of a shared
    database has its own.
    """

    new_requests_per_number: int = Field(3, ge=0)
    per_number_window: Duration = timedelta(hours=1)
    new_requests_global: int = Field(200, ge=0)
    global_window: Duration = timedelta(hours=1)
    attempts_per_hour: int = Field(120, ge=0)

    @field_validator("per_number_window", "global_window")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return v


class AgiConfig(_Section):
    """The FastAGI listener for "press 1 to be called back"; loopback unless Asterisk is remote."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(4574, ge=1, le=65535)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    mask_numbers: bool = False


HTTP_TOKEN_ENV = "CALLBACKD_HTTP_TOKEN"
_MIN_TOKEN = 16


class HttpConfig(_Section):
    """The lead-form API; off by default, and never on without a bearer token."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8380, ge=1, le=65535)
    token: SecretStr | None = None
    token_file: Path | None = None
    # GET /metrics (Prometheus) on this listener, without the token: keep host on loopback.
    metrics: bool = True

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < _MIN_TOKEN:
            raise ValueError(f"use at least {_MIN_TOKEN} characters, e.g. from: openssl rand -hex 24")
        return v

    # No token is required to load the file: `run` and `check-config` call Config.http_token(), which
    # also reads the service's environment and credential, so admin commands run without it.


def _topic(v: str, *, wildcards: bool) -> str:
    if not v or "\0" in v or len(v.encode()) > 65535:
        raise ValueError("must be a non-empty MQTT topic")
    for level in v.split("/"):
        if ("+" in level or "#" in level) and not wildcards:
            raise ValueError("may not contain the wildcards + or #")
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise ValueError("a wildcard must be a whole level, e.g. leads/+/form or leads/#")
    if "#" in v and not v.endswith("#"):
        raise ValueError("# may only be the last level")
    return v


_MAX_SESSION_EXPIRY = timedelta(seconds=0xFFFFFFFE)  # 0xFFFFFFFF would mean "never expires"


class MqttConfig(_Section):
    """Lead forms published to a broker; replies go to the message's response topic or reply_topic.

    The broker keeps a persistent session for ``client_id``, so leads published while the
    daemon is down are delivered when it is back, and a lead is acknowledged only once stored.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    topic: str = "callbackd/leads"
    # "" sends no replies except to MQTT v5 messages that name a response topic.
    reply_topic: str = "callbackd/leads/reply"
    # A v5 message's ResponseTopic is honoured only under this prefix (unset: reply_topic), so a
    # publisher cannot make the daemon publish, with its broker rights, anywhere else.
    response_prefix: str | None = None
    # The persistent session's name on the broker; "" means "callbackd-<node>". Keep it fixed.
    client_id: str = ""
    # How long the broker keeps the session (and queues leads) while the daemon is away.
    session_expiry: Duration = Field(timedelta(days=1), ge=timedelta(seconds=1), le=_MAX_SESSION_EXPIRY)
    # 1: every lead is acknowledged after it is stored. 2 is refused: its in-flight state lives
    # in the client's memory, so a lead received just before a crash would be lost.
    qos: int = Field(1, ge=0, le=1)
    reconnect_max: Duration = timedelta(seconds=60)

    @field_validator("topic")
    @classmethod
    def _filter(cls, v: str) -> str:
        return _topic(v, wildcards=True)

    @field_validator("reply_topic")
    @classmethod
    def _name(cls, v: str) -> str:
        return _topic(v, wildcards=False) if v else v

    @field_validator("response_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        return _topic(v, wildcards=False) if v else v  # "" honours no response topic

    def allows_response_topic(self, topic: str) -> bool:
        """Whether a reply may go to a message's own ResponseTopic: the prefix or a level below it."""
        prefix = (self.reply_topic if self.response_prefix is None else self.response_prefix).rstrip("/")
        return bool(prefix) and (topic == prefix or topic.startswith(prefix + "/"))


class ScheduledReportConfig(_Section):
    """One ``[[reports.schedule]]`` entry: a file written to *directory* on a cron schedule."""

    cron: str  # five crontab fields in the report time zone, e.g. "5 0 * * *"
    what: Literal["report", "calls", "requests", "attempts"] = "report"
    period: str = "yesterday"
    by: Literal["day", "hour", "queue", "operator", "source"] = "day"
    format: Literal["csv", "json", "table", "xlsx"] = "csv"
    directory: Path = Path("/var/lib/callbackd/reports")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v)
        except ValueError as exc:
            raise ValueError(f"{exc}; use five crontab fields such as '5 0 * * *'") from None
        return v

    @field_validator("period")
    @classmethod
    def _period(cls, v: str) -> str:
        from callbackd.domain.periods import PERIODS

        if v not in PERIODS:
            raise ValueError(f"unknown period {v!r}; use one of {', '.join(PERIODS)}")
        return v

    @model_validator(mode="after")
    def _exports_are_csv(self) -> ScheduledReportConfig:
        if self.what != "report" and self.format not in ("csv", "xlsx"):
            raise ValueError(f'{self.what} exports are CSV or xlsx only; drop format or set it to "csv"')
        return self


class ReportsConfig(_Section):
    timezone: str | None = None  # default: schedule.timezone
    short_abandon: Duration | None = None  # default: detection.short_abandon
    service_level: Duration = timedelta(seconds=20)
    csv_bom: bool = False
    csv_delimiter: Literal[",", ";", "\t"] = ","
    csv_decimal: Literal[".", ","] = "."
    language: Literal["en", "ru"] = "en"  # spreadsheet headers and sheet names
    schedule: list[ScheduledReportConfig] = []

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}; use an IANA name such as Europe/Moscow") from None
        return v

    @model_validator(mode="after")
    def _separators(self) -> ReportsConfig:
        if self.csv_delimiter == self.csv_decimal:
            raise ValueError("csv_delimiter and csv_decimal must differ (use ';' with a decimal ',')")
        return self


class RetentionConfig(_Section):
    """How long rows may name a client; unset keeps them. Set both to anonymise anything.

    A number is anonymised once all its calls are older than ``calls`` and all its contacts,
    requests and attempts older than ``contacts``, and it has no open request.
    """

    contacts: Duration | None = None
    calls: Duration | None = None
    # Spool and export directories that `callbackd privacy erase` scrubs besides [[reports.schedule]]'s.
    directories: list[Path] = []

    @field_validator("contacts", "calls")
    @classmethod
    def _positive(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v < timedelta(days=1):
            raise ValueError("must be at least 1d (or left out to keep rows)")
        return v

    def all_directories(self, reports: ReportsConfig) -> list[Path]:
        return list(dict.fromkeys([*self.directories, *(job.directory for job in reports.schedule)]))


API_SCOPES = ("intake", "read", "admin")
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _check_name(v: str) -> str:
    if not _TOKEN_NAME.match(v):
        raise ValueError("use 1 to 64 letters, digits, '.', '_' or '-'")
    return v


# A token's, endpoint's or account's name: it names the actor in the audit log and the outbox.
Name = Annotated[str, AfterValidator(_check_name)]


class ApiTokenConfig(_Section):
    """One ``[[api.tokens]]`` entry: a bearer token for a CRM or a script, and what it may do.

    Scopes: intake (POST /v1/callbacks), read (requests and report figures), admin (cancel,
    retry, schedule; implies read).
    """

    name: Name
    token: SecretStr | None = None
    token_file: Path | None = None
    scopes: list[Literal["intake", "read", "admin"]] = Field(min_length=1)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < _MIN_TOKEN:
            raise ValueError(f"use at least {_MIN_TOKEN} characters, e.g. from: openssl rand -hex 24")
        return v

    @model_validator(mode="after")
    def _one_secret(self) -> ApiTokenConfig:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("set exactly one of token and token_file")
        return self

    def secret(self) -> str:
        if self.token is not None:
            return self.token.get_secret_value()
        assert self.token_file is not None
        value = self.token_file.read_text().strip()
        if len(value) < _MIN_TOKEN:
            raise ConfigError(f"api.tokens {self.name}: the token in {self.token_file} is too short")
        return value


class ApiConfig(_Section):
    """The HTTP API beyond lead intake, served on the [http] listener."""

    tokens: list[ApiTokenConfig] = []

    @field_validator("tokens")
    @classmethod
    def _unique(cls, v: list[ApiTokenConfig]) -> list[ApiTokenConfig]:
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError("token names must differ (they name the actor in the audit log)")
        return v


WEBHOOK_EVENTS = (
    "request.created",
    "request.merged",
    "attempt.started",
    "attempt.outcome",
    "request.reached",
    "request.closed",
)
WebhookEvent = Literal[
    "request.created",
    "request.merged",
    "attempt.started",
    "attempt.outcome",
    "request.reached",
    "request.closed",
]


class WebhookEndpointConfig(_Section):
    """One ``[[webhooks.endpoints]]`` entry: where events go, signed with its secret.

    ``kind = "bitrix24"``: *url* is a Bitrix24 incoming webhook (``https://PORTAL/rest/USER/KEY/``);
    the missed call is registered and finished through telephony.externalcall.*, and the key in
    the URL authenticates, so no secret is needed.
    """

    name: Name
    url: str
    kind: Literal["generic", "bitrix24"] = "generic"
    secret: SecretStr | None = None
    secret_file: Path | None = None
    events: list[WebhookEvent] = list(WEBHOOK_EVENTS)
    bitrix_user_id: int = Field(1, ge=1)  # the Bitrix24 user the calls are shown to

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("use an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _signed(self) -> WebhookEndpointConfig:
        if self.kind == "generic" and (self.secret is None) == (self.secret_file is None):
            raise ValueError("set exactly one of secret and secret_file (the HMAC key)")
        if self.secret is not None and len(self.secret.get_secret_value()) < _MIN_TOKEN:
            raise ValueError(f"secret: use at least {_MIN_TOKEN} characters")
        return self

    def secret_value(self) -> str:
        if self.secret is not None:
            return self.secret.get_secret_value()
        if self.secret_file is not None:
            return self.secret_file.read_text().strip()
        return ""


class WebhooksConfig(_Section):
    """Events to CRMs through a database outbox: kept across restarts, retried with backoff."""

    endpoints: list[WebhookEndpointConfig] = []
    timeout: Duration = Field(timedelta(seconds=10), gt=timedelta(0))
    backoff_min: Duration = Field(timedelta(seconds=10), gt=timedelta(0))
    backoff_max: Duration = Field(timedelta(hours=1), gt=timedelta(0))
    max_tries: int = Field(30, ge=1)  # then the event goes to the dead-letter list
    poll_interval: Duration = Field(timedelta(seconds=1), gt=timedelta(0))
    concurrency: int = Field(8, ge=1, le=64)

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, v: list[WebhookEndpointConfig]) -> list[WebhookEndpointConfig]:
        names = [e.name for e in v]
        if len(set(names)) != len(names):
            raise ValueError("endpoint names must differ (the outbox is kept per name)")
        return v


class ConsoleAccountConfig(_Section):
    """One ``[[console.accounts]]`` entry; make the hash with ``callbackd console hash-password``."""

    name: Name
    password_hash: str = ""  # empty: only through the trusted proxy header
    role: Literal["viewer", "operator", "admin"] = "viewer"
    language: Literal["en", "ru"] | None = None  # default: console.language

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        if v and not v.startswith("$argon2"):
            raise ValueError("not an argon2 hash: make one with callbackd console hash-password")
        return v


class ConsoleConfig(_Section):
    """The web console on the [http] listener, at /console/."""

    enabled: bool = False
    language: Literal["en", "ru"] = "en"
    accounts: list[ConsoleAccountConfig] = []
    session_ttl: Duration = Field(timedelta(hours=12), gt=timedelta(0))
    session_key_file: Path | None = None  # default: a new key each start (sessions end on restart)
    secure_cookies: bool = True  # keep on unless the browser reaches the daemon over plain HTTP off loopback
    trusted_user_header: str | None = None  # e.g. "X-Remote-User", set by your reverse proxy
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]  # the header counts only from these addresses
    sign_in_attempts: int = Field(5, ge=1)  # failed sign-ins per account per sign_in_window
    sign_in_window: Duration = Field(timedelta(minutes=5), gt=timedelta(0))

    @field_validator("accounts")
    @classmethod
    def _unique(cls, v: list[ConsoleAccountConfig]) -> list[ConsoleAccountConfig]:
        names = [a.name for a in v]
        if len(set(names)) != len(names):
            raise ValueError("account names must differ")
        return v

    @model_validator(mode="after")
    def _usable(self) -> ConsoleConfig:
        if self.enabled and not self.accounts:
            raise ValueError("enabled without accounts: add [[console.accounts]]")
        return self


class ServiceConfig(_Section):
    """How the daemon reports on itself to ``callbackd status`` and systemd."""

    # Rewritten atomically every status_interval and on change; /run/callbackd is the unit's
    # RuntimeDirectory.
    status_file: Path = Path("/run/callbackd/status.json")
    status_interval: Duration = Field(timedelta(seconds=5), ge=timedelta(seconds=1))
    # The first SIGTERM waits this long for calls in flight; keep it below the unit's TimeoutStopSec.
    drain_grace: Duration = Field(timedelta(seconds=30), ge=timedelta(0))
    # Contacts and call records the database could not take yet (down, locked), fsync'd here and
    # replayed when it is back; StateDirectory=callbackd is /var/lib/callbackd.
    spool_file: Path = Path("/var/lib/callbackd/spool.jsonl")
    spool_max_items: int = Field(100_000, ge=1)
    # At exit, how long the queued contacts may wait for the database before they are spooled.
    flush_timeout: Duration = Field(timedelta(seconds=10), ge=timedelta(0))


class Config(_Section):
    ami: AmiConfig = AmiConfig()
    database: DatabaseConfig = DatabaseConfig()
    numbers: NumbersConfig = NumbersConfig()
    detection: DetectionConfig = DetectionConfig()
    dialer: DialerConfig = DialerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    limits: LimitsConfig = LimitsConfig()
    agi: AgiConfig = AgiConfig()
    http: HttpConfig = HttpConfig()
    mqtt: MqttConfig = MqttConfig()
    log: LogConfig = LogConfig()
    reports: ReportsConfig = ReportsConfig()
    service: ServiceConfig = ServiceConfig()
    retention: RetentionConfig = RetentionConfig()
    api: ApiConfig = ApiConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    console: ConsoleConfig = ConsoleConfig()
    node: str = Field(default_factory=lambda: os.uname().nodename)
    # The Asterisk this daemon watches: calls and contacts are unique per PBX, since two servers
    # on one database can raise the same Linkedid. "" means the node name; a standby daemon on
    # the same Asterisk sets the same value as the main one.
    pbx: str = Field("", max_length=64)

    @model_validator(mode="after")
    def _client_region_default(self) -> Config:
        if self.dialer.client_target and not self.dialer.client_region:
            # Frozen sections: filled in once here so the dialer needs no other section.
            dialer = self.dialer.model_copy(update={"client_region": self.numbers.default_region})
            object.__setattr__(self, "dialer", dialer)
        return self

    # -- domain objects built from the config ------------------------------------------

    def schedule_rules(self):
        return build_schedule(self.schedule)

    def pbx_identity(self) -> str:
        return self.pbx or self.node

    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"callbackd-{self.node}"

    def ami_secret(self) -> str:
        """Environment first, then the credentials file, then the config file."""
        env = os.environ.get("CALLBACKD_AMI_SECRET")
        if env:
            return env
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir and (Path(cred_dir) / "ami_secret").is_file():
            return (Path(cred_dir) / "ami_secret").read_text().strip()
        if self.ami.secret_file:
            return self.ami.secret_file.read_text().strip()
        if self.ami.secret is not None:
            return self.ami.secret.get_secret_value()
        raise ConfigError(
            "ami.secret: no AMI secret (set ami.secret, ami.secret_file or CALLBACKD_AMI_SECRET)"
        )

    def http_token(self) -> str:
        """Environment first, then token_file, then the config file; too short is refused."""
        token = os.environ.get(HTTP_TOKEN_ENV, "").strip()
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not token and cred_dir and (Path(cred_dir) / "http_token").is_file():
            token = (Path(cred_dir) / "http_token").read_text().strip()
        if not token and self.http.token_file:
            token = self.http.token_file.read_text().strip()
        if not token and self.http.token is not None:
            token = self.http.token.get_secret_value()
        if len(token) < _MIN_TOKEN:
            raise ConfigError(
                f"http.token: {'no token' if not token else 'token too short'} (set http.token, "
                f"http.token_file, {HTTP_TOKEN_ENV} or the http_token credential, at least {_MIN_TOKEN} "
                "characters)"
            )
        return token

    def warnings(self) -> list[str]:
        """What check-config points out without refusing."""
        out = []
        if url_password(self.database.url):
            out.append(
                "database.url holds a password: keep the file unreadable by others (it is checked), "
                "or give it in PGPASSWORD / a .pgpass file instead"
            )
        return out


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(ENV_PATH) or DEFAULT_PATH)


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _table(data: Any, name: str) -> dict[str, Any]:
    """``data[name]`` when it is a table; {} for anything else (validation names that mistake)."""
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def _tables(data: Any, name: str) -> list[dict[str, Any]]:
    value = data.get(name) if isinstance(data, dict) else None
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def url_password(url: object) -> str | None:
    """The password inside a database URL (``postgresql+asyncpg://user:PASSWORD@host/db``), if any."""
    if not isinstance(url, str):
        return None
    try:
        return urlsplit(url).password or None
    except ValueError:
        return None


def _holds_secret(data: dict[str, Any]) -> bool:
    return (
        bool(_table(data, "ami").get("secret"))
        or bool(_table(data, "http").get("token"))
        or bool(_table(data, "mqtt").get("password"))
        # A password in the URL is as secret as any other.
        or url_password(_table(data, "database").get("url")) is not None
        or any(t.get("token") for t in _tables(_table(data, "api"), "tokens"))
        or any(
            e.get("secret") or e.get("kind") == "bitrix24"  # a Bitrix24 webhook URL holds its key
            for e in _tables(_table(data, "webhooks"), "endpoints")
        )
    )


def secret_files(cfg: Config) -> list[tuple[str, Path]]:
    """Every file the config names that holds a secret, with its key."""
    files: list[tuple[str, Path | None]] = [
        ("ami.secret_file", cfg.ami.secret_file),
        ("http.token_file", cfg.http.token_file),
        ("console.session_key_file", cfg.console.session_key_file),
    ]
    files += [(f"api.tokens.{t.name}.token_file", t.token_file) for t in cfg.api.tokens]
    files += [
        (f"webhooks.endpoints.{i}.secret_file", e.secret_file) for i, e in enumerate(cfg.webhooks.endpoints)
    ]
    return [(key, path) for key, path in files if path is not None]


def _check_secret_files(p: Path, cfg: Config) -> None:
    """A secret file readable by others is refused, as an inline secret in a readable config is."""
    for key, path in secret_files(cfg):
        try:
            mode = path.stat().st_mode
        except OSError:  # missing: reading it says so, with the key
            continue
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise ConfigError(
                f"{p}: {key} {path} holds a secret but is readable by others "
                f"(mode {stat.S_IMODE(mode):o}); run: chmod o-rwx {path}"
            )


def load(path: str | os.PathLike[str] | None = None, *, check_permissions: bool = True) -> Config:
    """Read and validate; raise :class:`ConfigError` with every problem listed."""
    p = config_path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    if check_permissions and _holds_secret(data):
        mode = os.stat(p).st_mode
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise ConfigError(
                f"{p}: holds a secret but is readable by others (mode {stat.S_IMODE(mode):o}); "
                f"run: chmod o-rwx {p}"
            )
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(p, exc)) from None
    if check_permissions:
        _check_secret_files(p, cfg)
    return cfg
