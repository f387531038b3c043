"""The ``callbackd`` command.

Every failure ends in one line on standard error, ``callbackd: error: ...``, and an exit code
from :data:`EXIT_CODES` (never a traceback; ``CALLBACKD_DEBUG=1`` shows it for a bug report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import io
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from callbackd import config as config_mod
from callbackd.config import Config, ConfigError

EXIT_OK = 0
EXIT_ERROR = 1  # a runtime failure: the daemon could not run on, a request could not change state
EXIT_USAGE = 2  # bad command line: unknown option, a bad choice or value
EXIT_CONFIG = 3  # the config file (or a secret it names) cannot be used
EXIT_DATABASE = 4  # database missing, not migrated, locked or unreachable
EXIT_FILE = 5  # an output (or other) file cannot be written or read
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "runtime error (e.g. a request that cannot be cancelled, an unsupported Asterisk)",
    EXIT_USAGE: "usage error: unknown option, bad choice or value",
    EXIT_CONFIG: "config error: the file, a value in it, or a secret it names",
    EXIT_DATABASE: "database problem: missing, not migrated, locked or unreachable",
    EXIT_FILE: "file problem: an --output that cannot be written (nothing is created)",
}
# `callbackd status` keeps the LSB meanings: 0 running, 3 not running, 4 database unreadable.

try:
    from importlib import metadata

    VERSION = metadata.version("callbackd")
except Exception:  # run from a source tree without pip install
    VERSION = "unknown"


class OutputProblem(Exception):
    """An output file that cannot be written; nothing was created."""


class UsageProblem(Exception):
    """A value the parser could not check (a time, a period): exit 2."""


def _load(args: argparse.Namespace) -> Config:
    return config_mod.load(args.config)


def _zone(cfg: Config) -> Any:
    """The one zone every command shows times in: the report zone (reports.timezone, else the schedule's)."""
    from callbackd.adapters.reports import ReportSettings

    return ReportSettings.from_config(cfg).tz


def _engine(args: argparse.Namespace, cfg: Config, *, read_only: bool = False) -> Any:
    """An engine on an existing database: never creates the file or its directory."""
    from callbackd.adapters import db

    return db.make_engine(cfg.database.url, read_only=read_only, create=False, lock_timeout=args.lock_timeout)


async def _migrated(args: argparse.Namespace, cfg: Config, *, read_only: bool = False) -> Any:
    """:func:`_engine`, checked to be at this version's revision (DatabaseProblem otherwise)."""
    from callbackd.adapters import db

    engine = _engine(args, cfg, read_only=read_only)
    try:
        await db.check_migrated(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_mod.config_path(args.config)
    cfg = _load(args)
    try:
        cfg.ami_secret()
        if cfg.http.enabled:
            cfg.http_token()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {exc.filename}: {exc.strerror}") from None
    for warning in cfg.warnings():
        print(f"{path}: warning: {warning}", file=sys.stderr)
    print(f"{path}: OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from callbackd import logs
    from callbackd.app import Daemon

    cfg = _load(args)
    # Secrets first: a missing one is a config error now, not after AMI and the database answer.
    try:
        cfg.ami_secret()
        if cfg.http.enabled:
            cfg.http_token()
    except OSError as exc:
        path = config_mod.config_path(args.config)
        raise ConfigError(f"{path}: cannot read {exc.filename}: {exc.strerror}") from None
    logs.setup(cfg.log.level, cfg.log.format)
    try:
        return asyncio.run(Daemon(cfg, config_mod.config_path(args.config)).run())
    except Exception as exc:  # start-up failures: one clear line, non-zero exit
        from callbackd.adapters.ami import AmiError

        if isinstance(exc, AmiError | OSError):
            print(f"callbackd: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        raise


async def _with_store(
    args: argparse.Namespace, cfg: Config, fn: Callable[[Any], Awaitable[int]], *, read_only: bool = False
) -> int:
    from callbackd.adapters.store import Store
    from callbackd.app import CLAIM_LEASE

    engine = await _migrated(args, cfg, read_only=read_only)
    try:
        store = Store(
            engine,
            node=cfg.node,
            pbx=cfg.pbx_identity(),
            schedule=cfg.schedule_rules(),
            claim_lease=CLAIM_LEASE,
        )
        if cfg.webhooks.endpoints:  # changes made here reach the CRM too: the daemon sends the outbox
            from callbackd.adapters import webhooks

            store.outbox = webhooks.Outbox(webhooks.from_config(cfg)[0])
        return await fn(store)
    finally:
        await engine.dispose()


def cmd_status(args: argparse.Namespace) -> int:
    """The daemon's status file plus the database; exit 3 when the daemon is not running."""
    from callbackd.adapters import status

    cfg = _load(args)
    path = cfg.service.status_file
    data = status.read(path)
    now = status.utcnow()
    tz = _zone(cfg)
    verdict = status.assess(data, now, status.max_age(cfg), path)
    counts, next_due, db_error = asyncio.run(status.gather(cfg, lock_timeout=args.lock_timeout))
    rep = status.report(data, verdict, counts, next_due, db_error, now, tz)
    if args.json:
        _print_json(rep)
    else:
        _print_text(status.render(rep, now, tz))
    if not verdict.running:
        return status.NOT_RUNNING
    return status.DATABASE_ERROR if db_error else status.RUNNING


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from callbackd.adapters import db

    cfg = _load(args)

    async def go() -> int:
        # The one command that may create the database (and its directory).
        engine = db.make_engine(cfg.database.url, lock_timeout=args.lock_timeout)
        try:
            await db.upgrade(engine)
            print(f"database at revision {await db.current_revision(engine)}")
        finally:
            await engine.dispose()
        return 0

    return asyncio.run(go())


def _iso(value: datetime | None, tz: Any = None) -> str | None:
    """ISO 8601 in the display zone *tz* (with its offset), or None."""
    if not value:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(tz).isoformat() if tz is not None else value.isoformat()


def _print_json(obj: Any) -> None:
    """JSON as UTF-8 (Cyrillic as it is, not \\u escapes), whatever the locale."""
    with _output(None) as out:
        json.dump(obj, out, indent=2, ensure_ascii=False)
        out.write("\n")


def _print_text(text: str) -> None:
    with _output(None) as out:
        out.write(text + "\n")


def _wall(text: str) -> datetime:
    """'2026-03-02 15:00' (the client's local time) or an ISO time with an offset."""
    try:
        return datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise UsageProblem(f"bad time {text!r}; use YYYY-MM-DD HH:MM (the client's local time)") from None


def _request_dict(r: Any, tz: Any = None) -> dict[str, Any]:
    return {
        "id": r.id,
        "number": r.number,
        "name": r.name,
        "status": r.status,
        "reason": r.reason,
        "sources": r.sources,
        "contacts": r.contact_count,
        "attempts": r.attempts_made,
        "created_at": _iso(r.created_at, tz),
        "due_at": _iso(r.due_at, tz),
        # Why not sooner: ladder, chosen_time, business_hours or client_hours.
        "waits_for": r.wait_reason if r.status == "open" else None,
        "client_zones": r.client_zones or [],
        "preferred_at": _iso(r.preferred_at, tz),
        "time_chosen": bool(r.time_chosen),
        "did": r.did,
        "closed_at": _iso(r.closed_at, tz),
        "close_reason": r.close_reason,
        "note": r.note,
    }


def cmd_requests(args: argparse.Namespace) -> int:
    from callbackd.adapters.store import NotFound
    from callbackd.domain.errors import IllegalTransition
    from callbackd.domain.states import RequestEvent

    cfg = _load(args)
    now = datetime.now(UTC)
    tz = _zone(cfg)

    async def go(store: Any) -> int:
        if args.action == "list":
            rows = [_request_dict(r, tz) for r in await store.list_requests(args.status, args.limit)]
            if args.json:
                _print_json(rows)
            else:
                lines = [f"{'ID':>6}  {'STATUS':<10} {'NUMBER':<16} {'TRIES':>5}  {'DUE':<25} REASON"]
                for r in rows:
                    lines.append(
                        f"{r['id']:>6}  {r['status']:<10} {r['number']:<16} {r['attempts']:>5}  "
                        f"{r['due_at'] or '-':<25} {r['reason']}"
                    )
                _print_text("\n".join(lines))
            return 0
        if args.action == "show":
            req, attempts, contacts = await store.get_request(args.id)
            out = _request_dict(req, tz)
            out["attempts_detail"] = [
                {
                    "id": a.id,
                    "try": a.try_no,
                    "operator": a.operator,
                    "status": a.status,
                    "outcome": a.outcome,
                    "counted": a.counted,
                    "started_at": _iso(a.started_at, tz),
                    "ended_at": _iso(a.ended_at, tz),
                    "talk_seconds": a.talk_seconds,
                    "dial_status": a.dial_status,
                    "hangup_cause": a.hangup_cause,
                }
                for a in attempts
            ]
            out["contacts_detail"] = [
                {"source": c.source, "reason": c.reason, "at": _iso(c.at, tz), "disposition": c.disposition}
                for c in contacts
            ]
            _print_json(out)
            return 0
        if args.action == "add":
            from callbackd.app import intake_rules
            from callbackd.domain.intake import Contact, Disposition, Source, decide

            contact = Contact(
                source=Source.ADMIN,
                source_ref=uuid.uuid4().hex,
                raw_number=args.phone,
                reason="admin",
                at=now,
                name=args.name or "",
                comment=args.note or "",
            )
            decision = decide(contact, intake_rules(cfg))
            if decision.disposition is not Disposition.SCHEDULE:
                print(f"not added: {decision.disposition.value} ({decision.detail})", file=sys.stderr)
                return 1
            if args.at or args.tz:
                from dataclasses import replace

                from callbackd.domain.phone import E164, check_zone

                try:
                    client_tz = check_zone(args.tz) if args.tz else None
                    chosen = None
                    if args.at:
                        zones = store.schedule.zones_for(E164.trusted(decision.number), client_tz)
                        chosen = store.schedule.chosen_instant(_wall(args.at), zones)
                except ValueError as exc:
                    raise UsageProblem(f"not added: {exc}") from None
                contact = replace(
                    contact, client_tz=client_tz, preferred_at=chosen, time_chosen=chosen is not None
                )
            res = await store.record_contact(contact, decision)
            print(f"request {res.request_id} {'merged' if res.merged else 'created'} for {decision.number}")
            return 0
        if args.action == "at":
            when = _wall(args.when)
            try:
                req = await store.choose_time(args.id, when, now)
            except ValueError as exc:
                print(f"callbackd: error: request {args.id}: {exc}", file=sys.stderr)
                return EXIT_ERROR
            print(f"request {req.id}: due {_iso(req.due_at, tz)} ({req.wait_reason})")
            return 0
        event = RequestEvent.CANCEL if args.action == "cancel" else RequestEvent.RETRY_NOW
        try:
            req = await store.admin_event(args.id, event, now, actor=f"cli:{getpass.getuser()}")
        except IllegalTransition as exc:
            print(f"callbackd: error: request {args.id}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"request {req.id}: {req.status}" + (f", due {_iso(req.due_at, tz)}" if req.due_at else ""))
        return 0

    try:
        return asyncio.run(_with_store(args, cfg, go, read_only=args.action in ("list", "show")))
    except NotFound as exc:
        print(f"callbackd: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _bounds(args: argparse.Namespace, tz: Any) -> tuple[datetime, datetime]:
    """--from and --to (exclusive, default now); raises ValueError with the message to show."""
    from callbackd.domain.periods import parse_bound

    bounds = []
    for flag, text in (("--from", args.start), ("--to", args.end)):
        if text is None:
            bounds.append(datetime.now(UTC))
            continue
        try:
            bounds.append(parse_bound(text, tz))
        except ValueError:
            raise UsageProblem(f"{flag} {text!r}: use YYYY-MM-DD or an ISO 8601 date and time") from None
    start, end = bounds
    if start >= end:
        raise UsageProblem("--to must be after --from (it is exclusive: one day is --from D --to D+1)")
    return start, end


def _csv_options(args: argparse.Namespace, base: Any) -> Any:
    from dataclasses import replace

    if args.excel_ru:
        return type(base).excel_ru()
    opts = base
    if args.bom:
        opts = replace(opts, bom=True)
    if args.delimiter:
        delimiter = "\t" if args.delimiter == "tab" else args.delimiter
        opts = replace(opts, delimiter=delimiter, decimal="." if delimiter == "," else opts.decimal)
    return opts


def _check_output(path: str | None) -> None:
    """Before any work: an --output whose directory is missing or not writable is refused
    (OutputProblem); nothing is created, not even the directory."""
    if not path or path == "-":
        return
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise OutputProblem(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise OutputProblem(f"cannot write {path}: no directory {parent} (it is not created for you)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputProblem(f"cannot write {path}: directory {parent} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputProblem(f"cannot write {path}: permission denied")


@contextlib.contextmanager
def _output(path: str | None, *, binary: bool = False) -> Iterator[Any]:
    """Standard output as UTF-8 whatever the locale (bytes when *binary*), or a file replaced atomically."""
    from callbackd.adapters.files import atomic_write

    if path and path != "-":
        _check_output(path)
        try:
            with atomic_write(Path(path), binary=binary, create_parent=False) as f:
                yield f
        except OSError as exc:
            raise OutputProblem(f"cannot write {path}: {exc.strerror or exc}") from None
        return
    sys.stdout.flush()  # what print() wrote so far comes first
    if binary:  # a terminal was refused before (_binary_target)
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
    try:
        yield out
    finally:
        out.flush()
        out.detach()


def _settings(args: argparse.Namespace, cfg: Config) -> Any:
    from dataclasses import replace

    from callbackd.adapters import reports

    settings = reports.ReportSettings.from_config(cfg)
    return replace(settings, language=args.lang) if args.lang else settings


def _run_db(go: Callable[[], Awaitable[int]]) -> int:
    """Database errors become one line and exit 4 in :func:`main`."""
    return asyncio.run(go())


def cmd_privacy(args: argparse.Namespace) -> int:
    """Subject requests: export or erase everything stored about one number; retention on demand."""
    import structlog

    from callbackd.adapters import privacy
    from callbackd.domain.errors import InvalidNumber
    from callbackd.domain.phone import parse_caller_id

    cfg = _load(args)
    # The record of the request goes to stderr, so an export on stdout stays plain JSON.
    log = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    )
    number = None
    if args.action != "anonymise":
        try:
            number = parse_caller_id(args.number, cfg.numbers.default_region)
        except InvalidNumber as exc:
            raise UsageProblem(f"privacy: {exc}") from None
        if number is None:
            raise UsageProblem("privacy: no number given")
    _check_output(getattr(args, "output", None))

    async def go() -> int:
        engine = await _migrated(args, cfg)
        try:
            now = datetime.now(UTC)
            if args.action == "export":
                assert number is not None
                data = await privacy.export_number(engine, number)
                with _output(args.output) as out:
                    json.dump(data, out, indent=2, ensure_ascii=False)
                    out.write("\n")
                # Counts only: the log must not become one more place that holds the number.
                log.info("privacy.exported", **{table: len(rows) for table, rows in data.items()})
            elif args.action == "erase":
                assert number is not None
                dirs = cfg.retention.all_directories(cfg.reports)
                counts = await privacy.erase_number(engine, number, now, dirs)
                log.info("privacy.erased", **counts)
                print(" ".join(f"{k}={v}" for k, v in counts.items()))
            else:
                r = cfg.retention
                done = await privacy.anonymise_expired(engine, now, calls=r.calls, contacts=r.contacts)
                log.info("retention.anonymised", numbers=done)
                print(f"anonymised {done} number(s)")
            return 0
        finally:
            await engine.dispose()

    return _run_db(go)


def cmd_report(args: argparse.Namespace) -> int:
    from callbackd.adapters import reports
    from callbackd.domain.metrics import Grouping

    cfg = _load(args)
    settings = _settings(args, cfg)
    start, end = _bounds(args, settings.tz)
    _binary_target(args)
    if args.recovery and args.format == "xlsx":
        raise UsageProblem("report: --recovery writes table, csv or json")
    _check_output(args.output)
    options = _csv_options(args, settings.csv)

    async def go() -> int:
        engine = await _migrated(args, cfg, read_only=True)
        try:
            if args.recovery:  # groups by queue and source itself
                recovery = await reports.build_recovery(engine, start, end, thresholds=settings.thresholds)
            else:
                report = await reports.period_report(
                    engine,
                    start,
                    end,
                    by=Grouping(args.by) if args.by else None,
                    tz=settings.tz,
                    thresholds=settings.thresholds,
                )
        finally:
            await engine.dispose()
        with _output(args.output, binary=args.format in reports.BINARY_FORMATS) as out:
            if args.recovery:
                reports.write_recovery(recovery, out, args.format, options, settings.tz)
            else:
                reports.write_report(report, out, args.format, settings, options)
        return 0

    return _run_db(go)


def cmd_export(args: argparse.Namespace) -> int:
    from callbackd.adapters import reports

    cfg = _load(args)
    settings = _settings(args, cfg)
    start, end = _bounds(args, settings.tz)
    _binary_target(args)
    _check_output(args.output)
    options = _csv_options(args, settings.csv)

    async def go() -> int:
        engine = await _migrated(args, cfg, read_only=True)
        try:
            with _output(args.output, binary=args.format in reports.BINARY_FORMATS) as out:
                n = await reports.export(
                    engine, args.what, start, end, out, settings, options, fmt=args.format
                )
        finally:
            await engine.dispose()
        if args.output and args.output != "-":
            print(f"{n} {args.what} written to {args.output}", file=sys.stderr)
        return 0

    return _run_db(go)


def cmd_simulate(args: argparse.Namespace) -> int:
    from callbackd import whatif
    from callbackd.adapters import reports

    cfg = _load(args)
    tz = reports.ReportSettings.from_config(cfg).tz
    try:
        start, end = _bounds(args, tz)
        if args.runs < 1:
            raise ValueError("--runs must be at least 1")
        changes = whatif.Changes.parse(
            cfg,
            operators=args.operators,
            delays=args.delays,
            max_attempts=args.max_attempts,
            hours=args.hours,
            client_window=args.client_window,
            dialer=not args.no_dialer,
        )
        breaks = whatif.break_spans(args.breaks) if args.breaks else []
    except ValueError as exc:
        raise UsageProblem(f"simulate: {exc}") from None
    _check_output(args.output)

    async def go() -> int:
        engine = await _migrated(args, cfg, read_only=True)  # refuses a missing or old database first
        await engine.dispose()
        per_client = args.reach == "clients"
        out = await whatif.run(
            cfg, start, end, changes, runs=args.runs, seed=args.seed, breaks=breaks, per_client=per_client
        )
        with _output(args.output) as f:
            f.write(json.dumps(out, indent=2) + "\n" if args.format == "json" else whatif.render(out))
        return 0

    return _run_db(go)


def _binary_target(args: argparse.Namespace) -> None:
    """Refuse a spreadsheet bound for a terminal before any work is done."""
    if args.format == "xlsx" and (not args.output or args.output == "-") and sys.stdout.isatty():
        raise UsageProblem("a spreadsheet is binary: give --output FILE or redirect standard output")


def cmd_webhooks(args: argparse.Namespace) -> int:
    """The webhook outbox: what is pending, delivered or dead; send dead events again."""
    from callbackd.adapters import webhooks

    cfg = _load(args)

    if args.action == "retry" and not args.ids and not args.dead:
        raise UsageProblem("webhooks retry: give event ids or --dead")
    tz = _zone(cfg)

    async def go() -> int:
        engine = await _migrated(args, cfg, read_only=args.action == "list")
        try:
            if args.action == "retry":
                n = await webhooks.retry(engine, args.ids, all_dead=args.dead, now=datetime.now(UTC))
                print(f"{n} event(s) due again; the daemon sends them within webhooks.poll_interval")
                return 0
            rows = await webhooks.list_events(engine, args.status, args.limit)
        finally:
            await engine.dispose()
        if args.json:
            out = [
                {
                    "id": r.id,
                    "endpoint": r.endpoint,
                    "event": r.event,
                    "request_id": r.request_id,
                    "status": r.status,
                    "tries": r.tries,
                    "due_at": _iso(r.due_at, tz),
                    "delivered_at": _iso(r.delivered_at, tz),
                    "last_error": r.last_error,
                }
                for r in rows
            ]
            _print_json(out)
            return 0
        head = f"{'ID':>7}  {'STATUS':<9} {'ENDPOINT':<12} {'EVENT':<16} {'REQUEST':>7} {'TRIES':>5}"
        print(head + "  LAST ERROR")
        for r in rows:
            print(
                f"{r.id:>7}  {r.status:<9} {r.endpoint[:12]:<12} {r.event:<16} {r.request_id or '-':>7} "
                f"{r.tries:>5}  {r.last_error}"
            )
        return 0

    return _run_db(go)


def cmd_console(args: argparse.Namespace) -> int:
    """``console hash-password``: the argon2 hash for ``password_hash``, from a prompt or stdin."""
    import getpass as gp

    from callbackd.adapters.console.auth import hash_password

    if sys.stdin.isatty():
        password = gp.getpass("password: ")
        if gp.getpass("again: ") != password:
            raise UsageProblem("console: the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise UsageProblem("console: use at least 8 characters")
    print(hash_password(password))
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """The shell completion script (shtab), to source or install."""
    import shtab

    _print_text(shtab.complete(build_parser(), shell=args.shell).rstrip("\n"))
    return 0


def _period_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="start", required=True, metavar="DATE", help="YYYY-MM-DD or ISO datetime")
    p.add_argument("--to", dest="end", metavar="DATE", help="exclusive end (default: now)")
    p.add_argument(
        "--output", "-o", metavar="FILE", help="write FILE (replaced atomically; its directory must exist)"
    )
    p.add_argument("--bom", action="store_true", help="start CSV with a UTF-8 byte order mark")
    p.add_argument("--delimiter", choices=[",", ";", "tab"], metavar="CHAR", help="CSV: ',' ';' or 'tab'")
    p.add_argument("--excel-ru", action="store_true", help="CSV for Russian Excel: BOM, ';', decimal ','")
    p.add_argument("--lang", choices=["en", "ru"], help="xlsx headers (default: reports.language)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: use 0 to 3600 seconds")
    return value


def _epilog() -> str:
    codes = "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())
    return (
        f"exit codes:\n{codes}\n"
        "  (`status`: 0 running, 3 not running, 4 database unreadable)\n\n"
        "Times are shown in the report zone (reports.timezone, else schedule.timezone).\n"
        "Shell completion: callbackd completion bash > /etc/bash_completion.d/callbackd"
    )


def _global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """--config and --lock-timeout, accepted before the command and after it."""
    default: Any = None if top else argparse.SUPPRESS
    p.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=default,
        help=f"config file (default: ${config_mod.ENV_PATH} or {config_mod.DEFAULT_PATH})",
    )
    p.add_argument(
        "--lock-timeout",
        type=_seconds,
        metavar="SECONDS",
        default=5.0 if top else argparse.SUPPRESS,
        help="how long to wait for a SQLite database another process has locked (default 5)",
    )


def subparsers(p: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser below *p*, with its command path ("requests list")."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield name, child
                for sub_name, grandchild in subparsers(child):
                    yield f"{name} {sub_name}", grandchild


def build_parser() -> argparse.ArgumentParser:
    from callbackd.domain.states import RequestStatus

    p = argparse.ArgumentParser(
        prog="callbackd",
        description="Auto-callback engine for Asterisk.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"callbackd {VERSION}", help="print the version")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the daemon").set_defaults(func=cmd_run)
    sub.add_parser(
        "check-config", help="validate the config file, its secrets and their file modes"
    ).set_defaults(func=cmd_check_config)
    st = sub.add_parser("status", help="is the daemon running: AMI, operators, open requests, last error")
    st.add_argument("--json", action="store_true", help="print JSON instead of the summary")
    st.set_defaults(func=cmd_status)
    dbp = sub.add_parser("db", help="database maintenance")
    dbsub = dbp.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dbsub.add_parser("upgrade", help="create the database if needed and apply migrations").set_defaults(
        func=cmd_db_upgrade
    )

    rq = sub.add_parser("requests", help="list and manage callback requests")
    rqs = rq.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = rqs.add_parser("list", help="the latest requests, newest first")
    ls.add_argument("--status", choices=[s.value for s in RequestStatus], help="only requests in this state")
    ls.add_argument("--limit", type=_positive, default=200, metavar="N", help="at most N rows (default 200)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sh = rqs.add_parser("show", help="one request with its attempts and contacts, as JSON")
    sh.add_argument("id", type=int, help="the request id")
    add = rqs.add_parser("add", help="create (or merge into) a request for a number")
    add.add_argument("phone", help="the client's number, as dialled or in E.164")
    add.add_argument("--name", help="the client's name, shown to the operator")
    add.add_argument("--note", help="a comment stored with the request")
    add.add_argument("--at", metavar="TIME", help="call at this time, the client's local 'YYYY-MM-DD HH:MM'")
    add.add_argument("--tz", metavar="ZONE", help="the client's time zone (default: from the number)")
    at = rqs.add_parser("at", help="call an open request at a time the client chose")
    at.add_argument("id", type=int, help="the request id")
    at.add_argument("when", metavar="TIME", help="the client's local 'YYYY-MM-DD HH:MM'")
    for name, text in (("cancel", "cancel an open request"), ("retry", "make a request due now")):
        x = rqs.add_parser(name, help=text)
        x.add_argument("id", type=int, help="the request id")
    rq.set_defaults(func=cmd_requests)

    pv = sub.add_parser("privacy", help="export or erase one client's data; apply retention now")
    pvs = pv.add_subparsers(dest="action", required=True, metavar="ACTION")
    pe = pvs.add_parser("export", help="every stored row naming NUMBER, as JSON")
    pe.add_argument("number", help="the client's number")
    pe.add_argument(
        "--output", "-o", metavar="FILE", help="write FILE (its directory must exist), not stdout"
    )
    pvs.add_parser(
        "erase", help="anonymise NUMBER everywhere, cancel its open request, scrub exports"
    ).add_argument("number", help="the client's number")
    pvs.add_parser("anonymise", help="anonymise numbers past retention.calls / retention.contacts now")
    pv.set_defaults(func=cmd_privacy)

    rp = sub.add_parser("report", help="abandon rate, service level and callback figures for a period")
    _period_arguments(rp)
    rp.add_argument("--by", choices=["day", "hour", "queue", "operator", "source"], help="one row per group")
    rp.add_argument(
        "--format", choices=["table", "csv", "json", "xlsx"], default="table", help="output format"
    )
    rp.add_argument(
        "--recovery",
        action="store_true",
        help="recovery analytics instead: reach by try, callback or own call, per queue and source",
    )
    rp.set_defaults(func=cmd_report)
    sm = sub.add_parser("simulate", help="replay a stored period under another ladder, staff or hours")
    sm.add_argument("--from", dest="start", required=True, metavar="DATE", help="YYYY-MM-DD or ISO datetime")
    sm.add_argument("--to", dest="end", metavar="DATE", help="exclusive end (default: now)")
    sm.add_argument(
        "--operators", type=int, metavar="N", help="operators (default: as many as the period shows)"
    )
    sm.add_argument("--delays", metavar="LIST", help="retry delays, e.g. 1h,3h,6h (default: the config's)")
    sm.add_argument("--max-attempts", type=int, metavar="N", help="tries per request (default: the config's)")
    sm.add_argument(
        "--hours",
        metavar="SPEC",
        help="business hours, e.g. 'mon-fri=09:00-13:00,14:00-18:00;sat=10:00-14:00'",
    )
    sm.add_argument(
        "--client-window", metavar="SPANS", help="when clients may be called, every day, e.g. 10:00-20:00"
    )
    sm.add_argument(
        "--breaks",
        metavar="SPANS",
        help="the period's rota: one operator away in each span, every day (schedule time zone), "
        "e.g. 12:00-12:30,12:30-13:00 (the database holds who answered, not who was on duty)",
    )
    sm.add_argument("--no-dialer", action="store_true", help="the what-if without callbacks")
    sm.add_argument(
        "--reach",
        choices=["clients", "fitted"],
        default="clients",
        help="clients (default): each client's stored tries go as they went, later tries are drawn "
        "from the reach by try; fitted: every try is drawn",
    )
    sm.add_argument("--runs", type=int, default=20, help="repeated runs for the band (default 20)")
    sm.add_argument("--seed", type=int, default=1, help="random seed, for repeatable runs (default 1)")
    sm.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    sm.add_argument(
        "--output", "-o", metavar="FILE", help="write FILE (replaced atomically; its directory must exist)"
    )
    sm.set_defaults(func=cmd_simulate)
    ex = sub.add_parser("export", help="CSV or xlsx, one row per stored call, request or attempt")
    ex.add_argument("what", choices=["calls", "requests", "attempts"], help="what one row is")
    _period_arguments(ex)
    ex.add_argument("--format", choices=["csv", "xlsx"], default="csv", help="output format")
    ex.set_defaults(func=cmd_export)

    wh = sub.add_parser("webhooks", help="the webhook outbox: list events, send dead ones again")
    whs = wh.add_subparsers(dest="action", required=True, metavar="ACTION")
    wl = whs.add_parser("list", help="the latest events, newest first")
    wl.add_argument("--status", choices=["pending", "delivered", "dead"], help="only events in this state")
    wl.add_argument("--limit", type=_positive, default=100, metavar="N", help="at most N rows (default 100)")
    wl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    wr = whs.add_parser("retry", help="make events due again")
    wr.add_argument("ids", type=int, nargs="*", metavar="ID", help="event ids")
    wr.add_argument("--dead", action="store_true", help="every dead event")
    wh.set_defaults(func=cmd_webhooks)

    co = sub.add_parser("console", help="web console accounts")
    cos = co.add_subparsers(dest="action", required=True, metavar="ACTION")
    cos.add_parser("hash-password", help="print the argon2 hash of a password read from the prompt or stdin")
    co.set_defaults(func=cmd_console)

    cp = sub.add_parser("completion", help="print a shell completion script")
    cp.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete for")
    cp.set_defaults(func=cmd_completion)

    for _, child in list(subparsers(p)):
        _global_options(child, top=False)
    return p


def _problem(exc: BaseException, args: argparse.Namespace) -> tuple[int, str] | None:
    """The exit code and one line for a known failure; None for a bug."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    from callbackd.adapters.db import DatabaseProblem

    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, UsageProblem):
        return EXIT_USAGE, f"callbackd: error: {exc}"
    if isinstance(exc, OutputProblem):
        return EXIT_FILE, f"callbackd: error: {exc}"
    if isinstance(exc, DatabaseProblem):
        return EXIT_DATABASE, f"callbackd: error: database: {exc}"
    if isinstance(exc, DBAPIError | SQLAlchemyError) or type(exc).__module__.startswith("asyncpg"):
        orig = getattr(exc, "orig", None) or exc
        text = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]
        if "locked" in text:
            text += f" (another process holds it; waited {args.lock_timeout:g} s, see --lock-timeout)"
        elif "no such table" in text or ("does not exist" in text and "relation" in text):
            text += " (not migrated? run: callbackd db upgrade)"
        return EXIT_DATABASE, f"callbackd: error: database: {text}"
    if isinstance(exc, ConnectionError | TimeoutError) or (
        isinstance(exc, OSError) and exc.__class__.__name__ == "gaierror"
    ):
        return EXIT_DATABASE, f"callbackd: error: database: cannot connect: {exc}"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return EXIT_FILE, f"callbackd: error: cannot use{where}: {exc.strerror or exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse's message, exit 2
    try:
        return args.func(args)
    except BrokenPipeError:  # `callbackd requests list | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return EXIT_OK
    except KeyboardInterrupt:
        print("callbackd: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        known = _problem(exc, args)
        if os.environ.get("CALLBACKD_DEBUG") == "1":
            raise
        if known is None:  # a bug: still one line, with how to get the traceback
            text = (str(exc).splitlines() or [""])[0][:300]
            print(
                f"callbackd: error: {type(exc).__name__}: {text} (CALLBACKD_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
            return EXIT_ERROR
        code, message = known
        print(message, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
