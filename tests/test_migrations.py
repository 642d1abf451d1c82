"""Migrations: ordered, once each, safe when two run at the same time; reference schema."""

from __future__ import annotations

import threading

import psycopg

from listener.migrate import discover_migrations, migrate


def test_migrate_applies_everything_once_and_is_idempotent(empty_db_url: str) -> None:
    first = migrate(empty_db_url)
    second = migrate(empty_db_url)

    assert first.applied == [m.path.name for m in discover_migrations()]
    assert second.applied == []
    with psycopg.connect(empty_db_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM worker.schema_migrations ORDER BY 1")]
        assert versions == [m.version for m in discover_migrations()]
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'worker' AND table_name = 'events'"
            )
        }
    assert {"id", "kind", "subject_id", "payload", "status", "attempts", "run_at", "last_error",
            "created_at", "expires_at", "dedup_key"} <= columns
    # Without app tables there is nothing to attach triggers to, and that is not an error.
    assert first.triggers_on == []


def test_two_concurrent_migrations_apply_each_file_once(empty_db_url: str) -> None:
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(migrate(empty_db_url, reference_schema=True))
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    applied = sorted(name for r in reports for name in r.applied)
    assert applied == sorted(m.path.name for m in discover_migrations())


def test_reference_schema_reports_existing_tables_and_installs_triggers(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.clients (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
                     " full_name text, email text, phone text, whatsapp_opt_in boolean DEFAULT true,"
                     " email_opt_in boolean DEFAULT true, created_at timestamptz DEFAULT now())")

    report = migrate(empty_db_url, reference_schema=True)
    again = migrate(empty_db_url, reference_schema=True)

    assert report.reference_skipped == ["clients"]
    assert "bookings" in report.reference_created
    assert set(report.triggers_on) == {"bookings", "otp_codes", "vetting_applications"}
    assert again.reference_created == []
    assert again.applied == []
