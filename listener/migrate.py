"""Apply the numbered files of `sql/` in order, each once, each in its own transaction.

A session advisory lock serialises concurrent runs (two dynos' release phases, or a deploy
racing a developer): the second waits, then finds nothing left to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import structlog

log = structlog.get_logger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
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


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


@dataclass
class MigrationReport:
    applied: list[str] = field(default_factory=list)
    reference_created: list[str] = field(default_factory=list)
    reference_skipped: list[str] = field(default_factory=list)
    triggers_on: list[str] = field(default_factory=list)
    #: App tables that got the scheduled jobs' indexes (`worker.install_app_indexes()`).
    indexes_on: list[str] = field(default_factory=list)


def discover_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """The numbered migration files, in order; a duplicated number is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = _FILENAME.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: migration files are named NNN_description.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version}: {found[version].path.name}, {path.name}")
        found[version] = Migration(version, match.group(2), path)
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
    """Bring the database to the current schema; optionally create the reference app tables."""
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
