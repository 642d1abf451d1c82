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
        db_url, port=8080, cron_secret=GOOD_SECRET, webhook_base_url="https://w.example.com"
    )
    assert run_checks(settings) == []


def test_cli_says_ok_and_exits_0_when_all_is_well(db_url: str) -> None:
    result = run_check_cli(DATABASE_URL=db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok:")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"twilio_account_sid": "AC123", "twilio_whatsapp_number": "+14155238886"},
            "WhatsApp is half configured: TWILIO_AUTH_TOKEN missing",
        ),
        (
            {
                "twilio_account_sid": "AC123",
                "twilio_auth_token": "t",
                "twilio_whatsapp_number": "+14155238886",
            },
            "ADMIN_WHATSAPP is not set",
        ),
        ({"resend_api_key": "re_123"}, "ADMIN_EMAIL is not set"),
        ({"port": 8080}, "CRON_SECRET is not set: the /api/cron endpoints answer 503"),
        ({"cron_secret": "short"}, "CRON_SECRET is too short"),
        ({"webhook_base_url": "worker.example.com"}, "WEBHOOK_BASE_URL must be an absolute URL"),
        ({"webhook_base_url": "https://w.example.com/?a=1"}, "WEBHOOK_BASE_URL must not have a query"),
    ],
)
def test_each_settings_problem_is_reported(db_url: str, values: dict[str, Any], expected: str) -> None:
    problems = run_checks(settings_for(db_url, **values))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


def test_missing_database_url_is_reported() -> None:
    assert run_checks(settings_for(None)) == [
        "DATABASE_URL is not set (only the embedded demo database would be used)"
    ]


def test_unreachable_database_is_reported() -> None:
    problems = run_checks(settings_for("postgresql://postgres@127.0.0.1:1/nowhere"))
    assert len(problems) == 1
    assert problems[0].startswith("database unreachable through DATABASE_URL: ")


def test_schema_behind_is_reported(empty_db_url: str) -> None:
    [problem] = run_checks(settings_for(empty_db_url))
    assert problem.startswith("schema is behind: 001_worker_schema.sql, 002_event_triggers.sql")
    assert problem.endswith("(run `flavor-worker migrate`)")


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
    [problem] = run_checks(settings_for(role_without_notify))
    assert problem.startswith("LISTEN/NOTIFY failed through DATABASE_URL")
    assert "permission denied" in problem


def test_cli_prints_one_line_per_problem_and_exits_1(empty_db_url: str) -> None:
    result = run_check_cli(
        DATABASE_URL=empty_db_url,
        PORT="8080",
        TWILIO_ACCOUNT_SID="AC123",
        WEBHOOK_BASE_URL="ftp://nowhere",
    )
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4, lines
    assert all(line.startswith("problem: ") for line in lines)
    joined = "\n".join(lines)
    for fragment in (
        "WhatsApp is half configured",
        "CRON_SECRET is not set",
        "WEBHOOK_BASE_URL",
        "schema is behind",
    ):
        assert fragment in joined
