"""The data contract with the booking app, as the code relies on it: the app tables and columns
the triggers, the message queries and the jobs read, the event triggers and the jobs' indexes.

The README's "Data contract" table lists the same columns (tests/test_preflight.py keeps the two
equal). `flavor-worker check` reports every gap; `migrate` refuses, in words, to install its
triggers and indexes on tables that lack columns (it would otherwise fail inside PL/pgSQL).
"""

from __future__ import annotations

import psycopg

from listener.queries import QUERIES

#: table -> the columns the worker reads (more may exist; none of these may be missing).
APP_COLUMNS: dict[str, tuple[str, ...]] = {
    "clients": ("id", "full_name", "email", "phone", "whatsapp_opt_in", "email_opt_in"),
    "performers": ("id", "stage_name", "full_name", "email", "phone", "whatsapp_opt_in", "email_opt_in"),
    "bookings": (
        "id", "reference", "client_id", "performer_id", "status", "event_type", "event_start",
        "event_end", "venue", "timezone", "total_amount", "deposit_amount", "amount_paid",
        "deposit_paid_at", "cancellation_reason", "created_at", "updated_at",
    ),
    "notifications": (
        "id", "recipient_type", "recipient_id", "booking_id", "type", "title", "message", "read",
        "read_at", "created_at",
    ),
    "otp_codes": ("id", "email", "code", "purpose", "expires_at", "used_at"),
    "audit_logs": ("id", "action", "category", "entity_type", "entity_id", "actor", "details", "created_at"),
    "vetting_applications": (
        "id", "full_name", "stage_name", "email", "phone", "status", "review_notes", "decided_at",
    ),
}
#: table -> its event trigger (sql/002 `worker.install_triggers()`).
EVENT_TRIGGERS = {
    "bookings": "worker_booking_events",
    "otp_codes": "worker_otp_events",
    "vetting_applications": "worker_vetting_events",
}
#: table -> the scheduled jobs' indexes on it (sql/003 `worker.install_app_indexes()`).
JOB_INDEXES = {
    "bookings": (
        "bookings_stale_pending_idx", "bookings_confirmed_start_idx", "bookings_deposit_paid_start_idx",
    ),
    "notifications": ("notifications_read_created_idx",),
    "otp_codes": ("otp_codes_expires_idx",),
    "audit_logs": ("audit_logs_created_idx",),
}


def table_columns(conn: psycopg.Connection) -> dict[str, set[str]]:
    """The contract's tables that exist, with their columns."""
    found: dict[str, set[str]] = {}
    for table, column in conn.execute(QUERIES["app_columns"], {"tables": list(APP_COLUMNS)}):
        found.setdefault(table, set()).add(column)
    return found


def column_problems(existing: dict[str, set[str]]) -> list[str]:
    """One line per existing table that lacks columns of the contract."""
    problems = []
    for table, columns in existing.items():
        missing = [column for column in APP_COLUMNS[table] if column not in columns]
        if missing:
            problems.append(
                f"table {table} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
                " (the worker reads them: README \"Data contract\")"
            )
    return problems


def contract_problems(conn: psycopg.Connection, *, migrated: bool) -> list[str]:
    """Every way the app's tables fall short of the contract, one line each. The triggers and
    indexes, which `migrate` installs, are only looked for on a `migrated` database."""
    existing = table_columns(conn)
    absent = [table for table in APP_COLUMNS if table not in existing]
    problems = [
        f"table{'s' if len(absent) > 1 else ''} {', '.join(absent)} missing: the worker reads"
        f" {'them' if len(absent) > 1 else 'it'} (a new project creates the reference tables with"
        " `flavor-worker migrate --reference-schema`)"
    ] if absent else []
    problems += column_problems(existing)
    if not migrated:
        return problems
    triggers = {(table, name): enabled for table, name, enabled in conn.execute(QUERIES["app_triggers"])}
    for table, trigger in EVENT_TRIGGERS.items():
        if table not in existing:
            continue
        enabled = triggers.get((table, trigger))
        if enabled is None:
            problems.append(
                f"no event trigger on {table}: its changes send nothing (run `flavor-worker migrate`)"
            )
        elif not enabled:
            problems.append(f"the event trigger {trigger} on {table} is disabled: its changes send nothing")
    indexes = {name for (name,) in conn.execute(QUERIES["app_indexes"])}
    for table, names in JOB_INDEXES.items():
        absent = [name for name in names if name not in indexes]
        if table in existing and absent:
            problems.append(
                f"index {', '.join(absent)} missing on {table}: the scheduled jobs scan the whole table"
                " (run `flavor-worker migrate`)"
            )
    return problems
