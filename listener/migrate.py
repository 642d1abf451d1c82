"""Apply the numbered files of `sql/` in order, each once, each in its own transaction.

A session advisory lock serialises concurrent runs (two dynos' release phases, or a deploy
racing a developer): the second waits, then finds nothing left to do. A session lock needs a
session: behind a transaction pooler, migrate connects through LISTEN_DATABASE_URL (the CLI
passes `Settings.session_database_url`).

Before it installs its triggers and indexes on the app's tables, migrate checks that those
tables have the columns of the data contract (listener/contract.py) and refuses in words
(`ContractError`) rather than fail inside PL/pgSQL, before it has changed anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable

import psycopg
import structlog

from listener.contract import column_problems, table_columns

log = structlog.get_logger(__name__)

#: sql/ of the checkout, shipped in the wheel as the package `listener.migrations` (pyproject.toml).
SQL_DIR: Traversable = files("listener.migrations")
REFERENCE_SCHEMA = SQL_DIR / "reference" / "app_schema.sql"
REFERENCE_TABLES = (
    "clients",
    "performers",
    "bookings",
    "notifications",
    "otp_codes",
    "audit_logs",
    "vetting_applications",
)
#: The app tables `worker.install_triggers()` attaches event triggers to.
TRIGGER_TABLES = ("bookings", "otp_codes", "vetting_applications")
#: The key of the advisory lock taken by `migrate` (any constant unique to this app).
MIGRATION_LOCK_KEY = 0x466C_6176_6F72  # "Flavor"
_FILENAME = re.compile(r"^(\d{3,})_([\w-]+)\.sql$")


class ContractError(RuntimeError):
    """The app's tables lack columns the worker reads: `problems` has one line per table."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Traversable


@dataclass
class MigrationReport:
    applied: list[str] = field(default_factory=list)
    reference_created: list[str] = field(default_factory=list)
    reference_skipped: list[str] = field(default_factory=list)
    triggers_on: list[str] = field(default_factory=list)
    #: App tables that got the scheduled jobs' indexes (`worker.install_app_indexes()`).
    indexes_on: list[str] = field(default_factory=list)


def discover_migrations(sql_dir: Traversable = SQL_DIR) -> list[Migration]:
    """The numbered migration files, in order; a duplicated number is an error, and so is none
    at all (an install without its migrations would call any database current)."""
    found: dict[int, Migration] = {}
    for path in sorted((p for p in sql_dir.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        match = _FILENAME.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: migration files are named NNN_description.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version}: {found[version].path.name}, {path.name}")
        found[version] = Migration(version, match.group(2), path)
    if not found:
        raise RuntimeError(f"no migrations in {sql_dir}: this install of flavor-worker is incomplete")
    return [found[v] for v in sorted(found)]


def applied_versions(conn: psycopg.Connection) -> set[int]:
    """Versions recorded in worker.schema_migrations (empty if the worker never migrated)."""
    exists = conn.execute("SELECT to_regclass('worker.schema_migrations')").fetchone()
    if not exists or exists[0] is None:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM worker.schema_migrations")}


def pending_migrations(conn: psycopg.Connection) -> list[Migration]:
    done = applied_versions(conn)
    return [m for m in discover_migrations() if m.version not in done]


def migrate(conninfo: str, *, reference_schema: bool = False) -> MigrationReport:
    """Bring the database to the current schema; optionally create the reference app tables.

    Raises `ContractError`, before any migration is applied, when existing app tables lack columns."""
    report = MigrationReport()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute("CREATE SCHEMA IF NOT EXISTS worker")
            conn.execute(
                """CREATE TABLE IF NOT EXISTS worker.schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text        NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            if reference_schema:
                _create_reference_schema(conn, report)
            gaps = column_problems(table_columns(conn))
            if gaps:
                raise ContractError(gaps)
            for migration in pending_migrations(conn):
                with conn.transaction():
                    conn.execute(migration.path.read_text())
                    conn.execute(
                        "INSERT INTO worker.schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                report.applied.append(migration.path.name)
                log.info("migrate.applied", migration=migration.path.name)
            row = conn.execute("SELECT worker.install_triggers()").fetchone()
            report.triggers_on = list(row[0]) if row else []
            row = conn.execute("SELECT worker.install_app_indexes()").fetchone()
            report.indexes_on = list(row[0]) if row else []
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return report


def _create_reference_schema(conn: psycopg.Connection, report: MigrationReport) -> None:
    existing = {
        name
        for name in REFERENCE_TABLES
        if conn.execute("SELECT to_regclass(%s)", (f"public.{name}",)).fetchone()[0] is not None
    }
    with conn.transaction():
        conn.execute(REFERENCE_SCHEMA.read_text())
    report.reference_skipped = [t for t in REFERENCE_TABLES if t in existing]
    report.reference_created = [t for t in REFERENCE_TABLES if t not in existing]
    for table in report.reference_skipped:
        log.info("migrate.reference_table_exists", table=table)


def not_migrated_advice(conninfo: str | None, exc: Exception) -> str | None:
    """For an error about a missing table, function or schema on a database that lacks this
    install's migrations, what to do (a command's first contact with a new database should not
    answer in raw SQL errors); None for any other error, or when the schema is current."""
    errors = psycopg.errors
    undefined = (errors.UndefinedTable, errors.UndefinedFunction, errors.InvalidSchemaName)
    if conninfo is None or not isinstance(exc, undefined):
        return None
    try:
        with psycopg.connect(conninfo, connect_timeout=5) as conn:
            missing = pending_migrations(conn)
    except psycopg.Error:
        return None
    if not missing:
        return None
    return (
        f"the database is not migrated ({len(missing)} of this install's migrations not applied):"
        " run `flavor-worker migrate` first"
    )
