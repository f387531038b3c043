"""figures partials: finished days' figures kept, and the hours whose rows changed

Revision ID: 0008
Revises: 0003
Create Date: 2026-12-01

``figures_partials`` holds a day's cell accumulators (callbackd.domain.partials.encode_slice)
so the console does not read a finished day's rows again after a restart. ``figures_touched``
gets a row, from triggers on calls, requests, contacts and attempts, for each UTC hour
(seconds since the epoch // 3600) whose figures a write may change: the row's own hour, and
the hours it reaches into another day from. A stored day is used only while the touches of
its hours add up to what they were when it was built, so no write, by any path (the daemon,
the CLI, an erasure, a hand-made UPDATE), can leave a stale day behind. Rows are only ever
inserted (no hot row to lock); the console folds an hour's rows into one as it stores days.

The hours a write reaches: a call's missed calls are "reached later" by any later answered
call or callback of the same number, so an answered call or attempt touches the hours of its
number's missed calls from the latest earlier answer (before it, they were reached already)
up to its own time; a request's status shows on the calls its contacts came from; the queue
of a request is that of the call its first contact came from.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0003"
branch_labels = None
depends_on = None


def _sqlite_hour(x: str) -> str:
    return f"(CAST(strftime('%s', substr({x}, 1, 19)) AS INTEGER) / 3600)"


def _sqlite_reach(number: str, upto: str, call_id: str, attempt_id: str) -> str:
    """Missed calls of *number* whose "reached later" flips with an answer at *upto*."""
    h = _sqlite_hour("c.started_at")
    return f"""
    INSERT INTO figures_touched (hour, n)
    SELECT DISTINCT {h}, 1 FROM calls c
    WHERE {number} IS NOT NULL AND c.number = {number} AND c.outcome = 'missed' AND c.started_at < {upto}
      AND c.started_at >= coalesce((SELECT max(answered_at) FROM calls WHERE number = {number}
                                    AND outcome = 'answered' AND id IS NOT {call_id}), '')
      AND c.started_at >= coalesce((SELECT max(started_at) FROM attempts WHERE number = {number}
                                    AND outcome = 'answered' AND id IS NOT {attempt_id}), '');"""


def _sqlite_call(r: str) -> str:
    reach = _sqlite_reach(f"(CASE WHEN {r}.outcome = 'answered' THEN {r}.number END)", f"{r}.answered_at",
                          f"{r}.id", "NULL")  # fmt: skip
    return f"""
    INSERT INTO figures_touched (hour, n) VALUES ({_sqlite_hour(f"{r}.started_at")}, 1);
    INSERT INTO figures_touched (hour, n)
    SELECT DISTINCT {_sqlite_hour("q.created_at")}, 1 FROM contacts k JOIN requests q ON q.id = k.request_id
    WHERE k.pbx = {r}.pbx AND k.source = 'ami' AND k.source_ref = {r}.linkedid;
    {reach}"""


def _sqlite_request(r: str) -> str:
    return f"""
    INSERT INTO figures_touched (hour, n) VALUES ({_sqlite_hour(f"{r}.created_at")}, 1);
    INSERT INTO figures_touched (hour, n)
    SELECT DISTINCT {_sqlite_hour("c.started_at")}, 1 FROM contacts k
    JOIN calls c ON c.pbx = k.pbx AND c.linkedid = k.source_ref
    WHERE k.request_id = {r}.id AND k.source = 'ami';"""


def _sqlite_contact(r: str) -> str:
    return f"""
    INSERT INTO figures_touched (hour, n)
    SELECT {_sqlite_hour("c.started_at")}, 1 FROM calls c
    WHERE {r}.source = 'ami' AND c.pbx = {r}.pbx AND c.linkedid = {r}.source_ref;
    INSERT INTO figures_touched (hour, n)
    SELECT {_sqlite_hour("q.created_at")}, 1 FROM requests q WHERE q.id = {r}.request_id;"""


def _sqlite_attempt(r: str) -> str:
    reach = _sqlite_reach(f"(CASE WHEN {r}.outcome = 'answered' THEN {r}.number END)", f"{r}.started_at",
                          "NULL", f"{r}.id")  # fmt: skip
    return f"""
    INSERT INTO figures_touched (hour, n) VALUES ({_sqlite_hour(f"{r}.started_at")}, 1);
    INSERT INTO figures_touched (hour, n)
    SELECT {_sqlite_hour("q.created_at")}, 1 FROM requests q WHERE q.id = {r}.request_id;
    {reach}"""


# What a table's figures read from it: an UPDATE that changes none of it touches nothing
# (claims, leases and due times change requests and attempts all day long).
WATCHED = {
    "calls": None,  # every column
    "requests": ("status", "number", "created_at", "sources", "attempts_made"),
    "contacts": ("source", "source_ref", "pbx", "request_id"),
    "attempts": ("request_id", "try_no", "operator", "number", "outcome", "started_at"),
}
SQLITE_BODIES = {
    "calls": _sqlite_call,
    "requests": _sqlite_request,
    "contacts": _sqlite_contact,
    "attempts": _sqlite_attempt,
}


def _sqlite_triggers() -> list[str]:
    out = []
    for table, body in SQLITE_BODIES.items():
        cols = WATCHED[table]
        when = ""
        if cols:
            when = "WHEN " + " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in cols)
        out += [
            f"CREATE TRIGGER figures_{table}_insert AFTER INSERT ON {table} BEGIN {body('NEW')} END",
            f"CREATE TRIGGER figures_{table}_delete AFTER DELETE ON {table} BEGIN {body('OLD')} END",
            f"CREATE TRIGGER figures_{table}_update AFTER UPDATE ON {table} {when} "
            f"BEGIN {body('OLD')} {body('NEW')} END",
        ]
    return out


PG_FUNCTIONS = [
    # Immutable all through (on a UTC timestamp, not a timestamptz), so it is inlined into the queries.
    """CREATE FUNCTION figures_hour(t timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE
       AS $$ SELECT floor(extract(epoch FROM date_trunc('second', t AT TIME ZONE 'UTC')) / 3600)::bigint
       $$""",
    # PL/pgSQL, not SQL: its statements' plans are kept for the session instead of made per row.
    """CREATE FUNCTION figures_reach_touched(
         num varchar, upto timestamptz, call_id integer, attempt_id varchar
       ) RETURNS void LANGUAGE plpgsql AS $$
       DECLARE since timestamptz;
       BEGIN
         since := greatest(
           (SELECT max(answered_at) FROM calls
            WHERE number = num AND outcome = 'answered' AND id IS DISTINCT FROM call_id),
           (SELECT max(started_at) FROM attempts
            WHERE number = num AND outcome = 'answered' AND id IS DISTINCT FROM attempt_id));
         INSERT INTO figures_touched (hour, n)
         SELECT DISTINCT figures_hour(c.started_at), 1 FROM calls c
         WHERE c.number = num AND c.outcome = 'missed' AND c.started_at < upto
           AND (since IS NULL OR c.started_at >= since);
       END $$""",
    """CREATE FUNCTION figures_call_touched(r calls) RETURNS void LANGUAGE plpgsql AS $$
       BEGIN
         INSERT INTO figures_touched (hour, n) VALUES (figures_hour(r.started_at), 1);
         INSERT INTO figures_touched (hour, n)
         SELECT DISTINCT figures_hour(q.created_at), 1 FROM contacts k JOIN requests q ON q.id = k.request_id
         WHERE k.pbx = r.pbx AND k.source = 'ami' AND k.source_ref = r.linkedid;
         IF r.outcome = 'answered' AND r.number IS NOT NULL AND r.answered_at IS NOT NULL THEN
           PERFORM figures_reach_touched(r.number, r.answered_at, r.id, NULL);
         END IF;
       END $$""",
    """CREATE FUNCTION figures_request_touched(r requests) RETURNS void LANGUAGE plpgsql AS $$
       BEGIN
         INSERT INTO figures_touched (hour, n) VALUES (figures_hour(r.created_at), 1);
         INSERT INTO figures_touched (hour, n)
         SELECT DISTINCT figures_hour(c.started_at), 1 FROM contacts k
         JOIN calls c ON c.pbx = k.pbx AND c.linkedid = k.source_ref
         WHERE k.request_id = r.id AND k.source = 'ami';
       END $$""",
    """CREATE FUNCTION figures_contact_touched(r contacts) RETURNS void LANGUAGE plpgsql AS $$
       BEGIN
         INSERT INTO figures_touched (hour, n)
         SELECT figures_hour(c.started_at), 1 FROM calls c
         WHERE r.source = 'ami' AND c.pbx = r.pbx AND c.linkedid = r.source_ref;
         INSERT INTO figures_touched (hour, n)
         SELECT figures_hour(q.created_at), 1 FROM requests q WHERE q.id = r.request_id;
       END $$""",
    """CREATE FUNCTION figures_attempt_touched(r attempts) RETURNS void LANGUAGE plpgsql AS $$
       BEGIN
         INSERT INTO figures_touched (hour, n) VALUES (figures_hour(r.started_at), 1);
         INSERT INTO figures_touched (hour, n)
         SELECT figures_hour(q.created_at), 1 FROM requests q WHERE q.id = r.request_id;
         IF r.outcome = 'answered' AND r.number IS NOT NULL THEN
           PERFORM figures_reach_touched(r.number, r.started_at, NULL, r.id);
         END IF;
       END $$""",
]
PG_ROW = {"calls": "call", "requests": "request", "contacts": "contact", "attempts": "attempt"}


def _pg_triggers() -> list[str]:
    out = list(PG_FUNCTIONS)
    for table, row in PG_ROW.items():
        out.append(
            f"""CREATE FUNCTION figures_{table}_changed() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF TG_OP <> 'INSERT' THEN PERFORM figures_{row}_touched(OLD); END IF;
                  IF TG_OP <> 'DELETE' THEN PERFORM figures_{row}_touched(NEW); END IF;
                  RETURN NULL;
                END $$"""
        )
        cols = WATCHED[table]
        when = ""
        if cols:
            when = "WHEN (" + " OR ".join(f"OLD.{c}::text IS DISTINCT FROM NEW.{c}::text" for c in cols) + ")"
        out += [
            f"CREATE TRIGGER figures_{table}_insert_delete AFTER INSERT OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION figures_{table}_changed()",
            f"CREATE TRIGGER figures_{table}_update AFTER UPDATE ON {table} FOR EACH ROW {when} "
            f"EXECUTE FUNCTION figures_{table}_changed()",
        ]
    return out


def upgrade() -> None:
    op.create_table(
        "figures_touched",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_figures_touched_hour", "figures_touched", ["hour"])
    op.create_table(
        "figures_partials",
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("touched", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("start_at", "key", name="pk_figures_partials"),
    )
    statements = _pg_triggers() if op.get_bind().dialect.name == "postgresql" else _sqlite_triggers()
    for sql in statements:
        op.execute(sql)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in PG_ROW:
            op.execute(f"DROP TRIGGER figures_{table}_insert_delete ON {table}")
            op.execute(f"DROP TRIGGER figures_{table}_update ON {table}")
            op.execute(f"DROP FUNCTION figures_{table}_changed()")
        for row in PG_ROW.values():
            op.execute(f"DROP FUNCTION figures_{row}_touched")
        op.execute("DROP FUNCTION figures_reach_touched")
        op.execute("DROP FUNCTION figures_hour")
    else:
        for table in SQLITE_BODIES:
            for what in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER figures_{table}_{what}")
    op.drop_table("figures_partials")
    op.drop_index("ix_figures_touched_hour", table_name="figures_touched")
    op.drop_table("figures_touched")
