"""The ``callbackd`` command."""

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


def _load(args: argparse.Namespace) -> Config:
    return config_mod.load(args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    try:
        cfg.ami_secret()
        if cfg.http.enabled:
            cfg.http_token()
    except (ConfigError, OSError) as exc:
        print(f"{config_mod.config_path(args.config)}: {exc}", file=sys.stderr)
        return 1
    print(f"{config_mod.config_path(args.config)}: OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from callbackd import logs
    from callbackd.app import Daemon

    cfg = _load(args)
    logs.setup(cfg.log.level, cfg.log.format)
    try:
        return asyncio.run(Daemon(cfg, config_mod.config_path(args.config)).run())
    except Exception as exc:  # start-up failures: one clear line, non-zero exit
        from sqlalchemy.exc import DBAPIError

        from callbackd.adapters.ami import AmiError

        if isinstance(exc, AmiError | ConfigError | OSError):
            print(f"callbackd: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, DBAPIError):
            print(f"callbackd: database: {exc.orig}", file=sys.stderr)
            return 1
        raise


async def _with_store(cfg: Config, fn: Callable[[Any], Awaitable[int]]) -> int:
    from callbackd.adapters import db
    from callbackd.adapters.store import Store
    from callbackd.app import CLAIM_LEASE

    engine = db.make_engine(cfg.database.url)
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
    verdict = status.assess(data, now, status.max_age(cfg), path)
    counts, next_due, db_error = asyncio.run(status.gather(cfg))
    rep = status.report(data, verdict, counts, next_due, db_error, now)
    print(json.dumps(rep, indent=2) if args.json else status.render(rep, now))
    if not verdict.running:
        return status.NOT_RUNNING
    return status.DATABASE_ERROR if db_error else status.RUNNING


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from callbackd.adapters import db

    cfg = _load(args)

    async def go() -> int:
        engine = db.make_engine(cfg.database.url)
        try:
            await db.upgrade(engine)
            print(f"database at revision {await db.current_revision(engine)}")
        finally:
            await engine.dispose()
        return 0

    return asyncio.run(go())


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _wall(text: str) -> datetime:
    """'2026-03-02 15:00' (the client's local time) or an ISO time with an offset."""
    try:
        return datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise ValueError(f"bad time {text!r}; use YYYY-MM-DD HH:MM (the client's local time)") from None


def _request_dict(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "number": r.number,
        "name": r.name,
        "status": r.status,
        "reason": r.reason,
        "sources": r.sources,
        "contacts": r.contact_count,
        "attempts": r.attempts_made,
        "created_at": _iso(r.created_at),
        "due_at": _iso(r.due_at),
        # Why not sooner: ladder, chosen_time, business_hours or client_hours.
        "waits_for": r.wait_reason if r.status == "open" else None,
        "client_zones": r.client_zones or [],
        "preferred_at": _iso(r.preferred_at),
        "time_chosen": bool(r.time_chosen),
        "did": r.did,
        "closed_at": _iso(r.closed_at),
        "close_reason": r.close_reason,
        "note": r.note,
    }


def cmd_requests(args: argparse.Namespace) -> int:
    from callbackd.adapters.store import NotFound
    from callbackd.domain.errors import IllegalTransition
    from callbackd.domain.states import RequestEvent

    cfg = _load(args)
    now = datetime.now(UTC)

    async def go(store: Any) -> int:
        if args.action == "list":
            rows = [_request_dict(r) for r in await store.list_requests(args.status, args.limit)]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"{'ID':>6}  {'STATUS':<10} {'NUMBER':<16} {'TRIES':>5}  {'DUE':<25} REASON")
                for r in rows:
                    print(
                        f"{r['id']:>6}  {r['status']:<10} {r['number']:<16} {r['attempts']:>5}  "
                        f"{r['due_at'] or '-':<25} {r['reason']}"
                    )
            return 0
        if args.action == "show":
            req, attempts, contacts = await store.get_request(args.id)
            out = _request_dict(req)
            out["attempts_detail"] = [
                {
                    "id": a.id,
                    "try": a.try_no,
                    "operator": a.operator,
                    "status": a.status,
                    "outcome": a.outcome,
                    "counted": a.counted,
                    "started_at": _iso(a.started_at),
                    "ended_at": _iso(a.ended_at),
                    "talk_seconds": a.talk_seconds,
                    "dial_status": a.dial_status,
                    "hangup_cause": a.hangup_cause,
                }
                for a in attempts
            ]
            out["contacts_detail"] = [
                {"source": c.source, "reason": c.reason, "at": _iso(c.at), "disposition": c.disposition}
                for c in contacts
            ]
            print(json.dumps(out, indent=2))
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
                    tz = check_zone(args.tz) if args.tz else None
                    chosen = None
                    if args.at:
                        zones = store.schedule.zones_for(E164.trusted(decision.number), tz)
                        chosen = store.schedule.chosen_instant(_wall(args.at), zones)
                except ValueError as exc:
                    print(f"not added: {exc}", file=sys.stderr)
                    return 2
                contact = replace(contact, client_tz=tz, preferred_at=chosen, time_chosen=chosen is not None)
            res = await store.record_contact(contact, decision)
            print(f"request {res.request_id} {'merged' if res.merged else 'created'} for {decision.number}")
            return 0
        if args.action == "at":
            try:
                req = await store.choose_time(args.id, _wall(args.when), now)
            except ValueError as exc:
                print(f"request {args.id}: {exc}", file=sys.stderr)
                return 1
            print(f"request {req.id}: due {req.due_at.isoformat()} ({req.wait_reason})")
            return 0
        event = RequestEvent.CANCEL if args.action == "cancel" else RequestEvent.RETRY_NOW
        try:
            req = await store.admin_event(args.id, event, now, actor=f"cli:{getpass.getuser()}")
        except IllegalTransition as exc:
            print(f"request {args.id}: {exc}", file=sys.stderr)
            return 1
        except NotFound as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(f"request {req.id}: {req.status}" + (f", due {req.due_at.isoformat()}" if req.due_at else ""))
        return 0

    try:
        return asyncio.run(_with_store(cfg, go))
    except NotFound as exc:
        print(str(exc), file=sys.stderr)
        return 1


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
            raise ValueError(f"{flag} {text!r}: use YYYY-MM-DD or an ISO 8601 date and time") from None
    start, end = bounds
    if start >= end:
        raise ValueError("--to must be after --from (it is exclusive: one day is --from D --to D+1)")
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


@contextlib.contextmanager
def _output(path: str | None, *, binary: bool = False) -> Iterator[Any]:
    """Standard output as UTF-8 whatever the locale (bytes when *binary*), or a file replaced atomically."""
    from callbackd.adapters.files import atomic_write

    if path and path != "-":
        with atomic_write(Path(path), binary=binary) as f:
            yield f
        return
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
    from sqlalchemy.exc import DBAPIError

    try:
        return asyncio.run(go())
    except DBAPIError as exc:
        print(f"callbackd: database: {exc.orig} (is it migrated? callbackd db upgrade)", file=sys.stderr)
        return 1


def cmd_privacy(args: argparse.Namespace) -> int:
    """Subject requests: export or erase everything stored about one number; retention on demand."""
    import structlog

    from callbackd.adapters import db, privacy
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
            print(f"callbackd privacy: {exc}", file=sys.stderr)
            return 2
        if number is None:
            print("callbackd privacy: no number given", file=sys.stderr)
            return 2

    async def go() -> int:
        engine = db.make_engine(cfg.database.url)
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
    from callbackd.adapters import db, reports
    from callbackd.domain.metrics import Grouping

    cfg = _load(args)
    settings = _settings(args, cfg)
    try:
        start, end = _bounds(args, settings.tz)
        _binary_target(args)
        if args.recovery and args.format == "xlsx":
            raise ValueError("--recovery writes table, csv or json")
    except ValueError as exc:
        print(f"callbackd report: {exc}", file=sys.stderr)
        return 2
    options = _csv_options(args, settings.csv)

    async def go() -> int:
        engine = db.make_engine(cfg.database.url)
        try:
            if args.recovery:  # groups by queue and source itself
                recovery = await reports.build_recovery(engine, start, end, thresholds=settings.thresholds)
            else:
                report = await reports.build_report(
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
    from callbackd.adapters import db, reports

    cfg = _load(args)
    settings = _settings(args, cfg)
    try:
        start, end = _bounds(args, settings.tz)
        _binary_target(args)
    except ValueError as exc:
        print(f"callbackd export: {exc}", file=sys.stderr)
        return 2
    options = _csv_options(args, settings.csv)

    async def go() -> int:
        engine = db.make_engine(cfg.database.url)
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
    except ValueError as exc:
        print(f"callbackd simulate: {exc}", file=sys.stderr)
        return 2

    async def go() -> int:
        out = await whatif.run(cfg, start, end, changes, runs=args.runs, seed=args.seed)
        with _output(args.output) as f:
            f.write(json.dumps(out, indent=2) + "\n" if args.format == "json" else whatif.render(out))
        return 0

    return _run_db(go)


def _binary_target(args: argparse.Namespace) -> None:
    """Refuse a spreadsheet bound for a terminal before any work is done."""
    if args.format == "xlsx" and (not args.output or args.output == "-") and sys.stdout.isatty():
        raise ValueError("a spreadsheet is binary: give --output FILE or redirect standard output")


def cmd_webhooks(args: argparse.Namespace) -> int:
    """The webhook outbox: what is pending, delivered or dead; send dead events again."""
    from callbackd.adapters import db, webhooks

    cfg = _load(args)

    async def go() -> int:
        engine = db.make_engine(cfg.database.url)
        try:
            if args.action == "retry":
                if not args.ids and not args.dead:
                    print("callbackd webhooks retry: give event ids or --dead", file=sys.stderr)
                    return 2
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
                    "due_at": _iso(r.due_at),
                    "delivered_at": _iso(r.delivered_at),
                    "last_error": r.last_error,
                }
                for r in rows
            ]
            print(json.dumps(out, indent=2))
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
            print("callbackd console: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("callbackd console: use at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _period_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="start", required=True, metavar="DATE", help="YYYY-MM-DD or ISO datetime")
    p.add_argument("--to", dest="end", metavar="DATE", help="exclusive end (default: now)")
    p.add_argument("--output", "-o", metavar="FILE", help="write FILE (replaced atomically), not stdout")
    p.add_argument("--bom", action="store_true", help="start CSV with a UTF-8 byte order mark")
    p.add_argument("--delimiter", choices=[",", ";", "tab"], metavar="CHAR", help="CSV: ',' ';' or 'tab'")
    p.add_argument("--excel-ru", action="store_true", help="CSV for Russian Excel: BOM, ';', decimal ','")
    p.add_argument("--lang", choices=["en", "ru"], help="xlsx headers (default: reports.language)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callbackd", description="Auto-callback engine for Asterisk.")
    p.add_argument(
        "--config",
        "-c",
        help=f"config file (default: ${config_mod.ENV_PATH} or {config_mod.DEFAULT_PATH})",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the daemon").set_defaults(func=cmd_run)
    sub.add_parser("check-config", help="validate the config file").set_defaults(func=cmd_check_config)
    st = sub.add_parser("status", help="is the daemon running: AMI, operators, open requests, last error")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    dbp = sub.add_parser("db", help="database maintenance")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    dbsub.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)

    rq = sub.add_parser("requests", help="list and manage callback requests")
    rqs = rq.add_subparsers(dest="action", required=True)
    ls = rqs.add_parser("list")
    ls.add_argument("--status")
    ls.add_argument("--limit", type=int, default=200)
    ls.add_argument("--json", action="store_true")
    sh = rqs.add_parser("show")
    sh.add_argument("id", type=int)
    add = rqs.add_parser("add")
    add.add_argument("phone")
    add.add_argument("--name")
    add.add_argument("--note")
    add.add_argument("--at", metavar="TIME", help="call at this time, the client's local 'YYYY-MM-DD HH:MM'")
    add.add_argument("--tz", metavar="ZONE", help="the client's time zone (default: from the number)")
    at = rqs.add_parser("at", help="call an open request at a time the client chose")
    at.add_argument("id", type=int)
    at.add_argument("when", metavar="TIME", help="the client's local 'YYYY-MM-DD HH:MM'")
    for name in ("cancel", "retry"):
        x = rqs.add_parser(name)
        x.add_argument("id", type=int)
    rq.set_defaults(func=cmd_requests)

    pv = sub.add_parser("privacy", help="export or erase one client's data; apply retention now")
    pvs = pv.add_subparsers(dest="action", required=True)
    pe = pvs.add_parser("export", help="every stored row naming NUMBER, as JSON")
    pe.add_argument("number")
    pe.add_argument("--output", "-o", metavar="FILE", help="write FILE, not stdout")
    pvs.add_parser(
        "erase", help="anonymise NUMBER everywhere, cancel its open request, scrub exports"
    ).add_argument("number")
    pvs.add_parser("anonymise", help="anonymise numbers past retention.calls / retention.contacts now")
    pv.set_defaults(func=cmd_privacy)

    rp = sub.add_parser("report", help="abandon rate, service level and callback figures for a period")
    _period_arguments(rp)
    rp.add_argument("--by", choices=["day", "hour", "queue", "operator", "source"])
    rp.add_argument("--format", choices=["table", "csv", "json", "xlsx"], default="table")
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
    sm.add_argument("--no-dialer", action="store_true", help="the what-if without callbacks")
    sm.add_argument("--runs", type=int, default=20, help="repeated runs for the band (default 20)")
    sm.add_argument("--seed", type=int, default=1)
    sm.add_argument("--format", choices=["table", "json"], default="table")
    sm.add_argument("--output", "-o", metavar="FILE", help="write FILE (replaced atomically), not stdout")
    sm.set_defaults(func=cmd_simulate)
    ex = sub.add_parser("export", help="CSV or xlsx, one row per stored call, request or attempt")
    ex.add_argument("what", choices=["calls", "requests", "attempts"])
    _period_arguments(ex)
    ex.add_argument("--format", choices=["csv", "xlsx"], default="csv")
    ex.set_defaults(func=cmd_export)

    wh = sub.add_parser("webhooks", help="the webhook outbox: list events, send dead ones again")
    whs = wh.add_subparsers(dest="action", required=True)
    wl = whs.add_parser("list")
    wl.add_argument("--status", choices=["pending", "delivered", "dead"])
    wl.add_argument("--limit", type=int, default=100)
    wl.add_argument("--json", action="store_true")
    wr = whs.add_parser("retry")
    wr.add_argument("ids", type=int, nargs="*", metavar="ID")
    wr.add_argument("--dead", action="store_true", help="every dead event")
    wh.set_defaults(func=cmd_webhooks)

    co = sub.add_parser("console", help="web console accounts")
    cos = co.add_subparsers(dest="action", required=True)
    cos.add_parser("hash-password", help="print the argon2 hash of a password read from the prompt or stdin")
    co.set_defaults(func=cmd_console)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `callbackd requests list | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0


if __name__ == "__main__":
    sys.exit(main())
