"""`flavor-worker check`: each problem is found, reported on one line, and makes the exit non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from core.settings import Settings
from listener.checks import run_checks
from listener.migrate import migrate
from tests.processes import REPO

GOOD_SECRET = "x" * 40


def settings_for(database_url: str | None, **values: Any) -> Settings:
    return Settings(database_url=database_url, **values)


def run_check_cli(**env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TWILIO_", "RESEND_", "CRON_", "ADMIN_", "PORT"))
    }
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "listener", "check"],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_sound_configuration_has_no_problems(db_url: str) -> None:
    settings = settings_for(
        db_url, port=8080, cron_secret=GOOD_SECRET, webhook_base_url="https://w.example.com",
        admin_whatsapp="+61400000000", admin_email="admin@example.com", message_transport="console",
    )
    report = run_checks(settings)
    assert (report.problems, report.warnings) == ([], [])


def test_cli_says_ok_and_exits_0_when_all_is_well(db_url: str) -> None:
    result = run_check_cli(DATABASE_URL=db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("ok:")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"twilio_account_sid": "AC123", "twilio_whatsapp_number": "+14155238886"},
            "WhatsApp is half configured: TWILIO_AUTH_TOKEN missing",
        ),
        ({"port": 8080}, "CRON_SECRET is not set: the /api/cron endpoints answer 503"),
        ({"cron_secret": "short"}, "CRON_SECRET is too short"),
        ({"admin_whatsapp": "0400 00"}, "ADMIN_WHATSAPP is not a phone number (read in DEFAULT_PHONE_REGION"),
    ],
)
def test_each_settings_problem_is_reported(db_url: str, values: dict[str, Any], expected: str) -> None:
    problems = run_checks(settings_for(db_url, **values)).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


def test_admin_addresses_and_simulated_channels_are_warnings_not_problems(db_url: str) -> None:
    """Admin alerts are not opt-out-able: with no admin address they go nowhere, silently."""
    report = run_checks(settings_for(db_url))
    assert report.problems == []
    assert report.warnings == [
        "ADMIN_WHATSAPP is not set: admin WhatsApp alerts (bookings, deposits) go nowhere",
        "ADMIN_EMAIL is not set: admin emails go nowhere",
        "Twilio is not configured: WhatsApp messages are only logged (simulated)",
        "RESEND_API_KEY is not set: emails are only logged (simulated)",
    ]


def test_missing_database_url_is_reported() -> None:
    assert run_checks(settings_for(None)).problems == [
        "DATABASE_URL is not set (only the embedded demo database would be used)"
    ]


def test_unreachable_database_is_reported() -> None:
    problems = run_checks(settings_for("postgresql://postgres@127.0.0.1:1/nowhere")).problems
    assert len(problems) == 1
    assert problems[0].startswith("database unreachable through DATABASE_URL: ")


def test_an_empty_database_is_behind_and_has_none_of_the_app_tables(empty_db_url: str) -> None:
    behind, tables = run_checks(settings_for(empty_db_url)).problems
    assert behind.startswith("schema is behind: 001_worker_schema.sql, 002_event_triggers.sql")
    assert behind.endswith("(run `flavor-worker migrate`)")
    assert tables.startswith(
        "tables clients, performers, bookings, notifications, otp_codes, audit_logs, vetting_applications"
        " missing"
    )


def test_a_migrated_database_without_app_tables_is_not_ok(empty_db_url: str) -> None:
    """Every job step would fail with UndefinedTable: `check` must not say ok."""
    migrate(empty_db_url)
    [problem] = run_checks(settings_for(empty_db_url)).problems
    assert problem.startswith("tables clients, performers, bookings, notifications")


def test_missing_contract_columns_triggers_and_indexes_are_each_named(
    db: psycopg.Connection, db_url: str
) -> None:
    db.execute("ALTER TABLE bookings DROP COLUMN cancellation_reason, DROP COLUMN venue")
    db.execute("ALTER TABLE otp_codes DISABLE TRIGGER worker_otp_events")
    db.execute("DROP TRIGGER worker_vetting_events ON vetting_applications")
    db.execute("DROP INDEX notifications_read_created_idx")
    problems = run_checks(settings_for(db_url)).problems
    assert problems == [
        "table bookings lacks columns venue, cancellation_reason (the worker reads them:"
        ' README "Data contract")',
        "the event trigger worker_otp_events on otp_codes is disabled: its changes send nothing",
        "no event trigger on vetting_applications: its changes send nothing (run `flavor-worker migrate`)",
        "index notifications_read_created_idx missing on notifications: the scheduled jobs scan the whole"
        " table (run `flavor-worker migrate`)",
    ]


def test_a_schema_ahead_of_this_install_is_a_warning(db: psycopg.Connection, db_url: str) -> None:
    """A newer release migrated first (rolling deploy): this older worker still works."""
    db.execute("INSERT INTO worker.schema_migrations (version, name) VALUES (999, 'from_the_future')")
    report = run_checks(settings_for(db_url))
    assert report.problems == []
    assert "schema is ahead of this flavor-worker (migrations 999): upgrade it" in report.warnings


@pytest.fixture
def role_without_notify(db_url: str) -> Iterator[str]:
    """A login role of the test database for which NOTIFY is refused: LISTEN/NOTIFY cannot work."""
    name = f"fw_check_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(name)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA worker TO {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("GRANT SELECT ON worker.schema_migrations TO {}").format(sql.Identifier(name)))
        # Function privileges live in this database's catalog: only this database is affected.
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC")
    try:
        yield make_conninfo(db_url, user=name, password="pw")
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_listen_notify_impossible_through_the_url_is_reported(role_without_notify: str) -> None:
    [problem] = run_checks(settings_for(role_without_notify)).problems
    assert problem.startswith("LISTEN/NOTIFY failed through DATABASE_URL")
    assert "permission denied" in problem


def test_cli_prints_one_line_per_problem_and_exits_1(empty_db_url: str) -> None:
    result = run_check_cli(
        DATABASE_URL=empty_db_url,
        PORT="8080",
        TWILIO_ACCOUNT_SID="AC123",
        WORKER_CONCURENCY="5",
        LOG_LEVLE="debug",
    )
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    problems = [line for line in lines if line.startswith("problem: ")]
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(problems) + len(warnings) == len(lines)
    assert len(problems) == 4, lines
    for fragment in ("WhatsApp is half configured", "CRON_SECRET is not set", "schema is behind", "tables"):
        assert any(fragment in line for line in problems), fragment
    assert warnings[:2] == [
        "warning: LOG_LEVLE is not a setting: did you mean LOG_LEVEL? (ignored)",
        "warning: WORKER_CONCURENCY is not a setting: did you mean WORKER_CONCURRENCY? (ignored)",
    ]
