"""Shared pieces of the scheduler tests: settings, a pool, a fixed clock, app rows of a given age."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from core.db import create_pool
from core.settings import Settings

#: The moment the tests' clock stands still at (a Tuesday, no DST anywhere near).
NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def fixed_clock(moment: datetime = NOW) -> Any:
    return lambda: moment


def job_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": db_url, "scheduler_enabled": False, **overrides}
    return Settings(**values)


@contextlib.asynccontextmanager
async def open_pool(db_url: str, size: int = 4) -> AsyncIterator[AsyncConnectionPool]:
    pool = create_pool(db_url, size)
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()


def add_notification(db: psycopg.Connection, *, age: timedelta, read: bool, now: datetime = NOW) -> str:
    row = db.execute(
        "INSERT INTO notifications (recipient_type, type, title, message, read, read_at, created_at)"
        " VALUES ('client', 'booking_update', 'Update', 'Your booking changed', %s, %s, %s) RETURNING id",
        (read, now - age if read else None, now - age),
    ).fetchone()
    return str(row[0])


def add_otp(db: psycopg.Connection, *, expires_in: timedelta, now: datetime = NOW) -> str:
    # Silenced: an OTP row makes an otp.created event, which these tests do not need.
    with db.transaction():
        db.execute("SET LOCAL flavor_worker.silence = 'on'")
        row = db.execute(
            "INSERT INTO otp_codes (email, code, expires_at, created_at)"
            " VALUES ('ann@example.com', '123456', %s, %s) RETURNING id",
            (now + expires_in, now - timedelta(minutes=10)),
        ).fetchone()
    return str(row[0])


def add_audit_log(db: psycopg.Connection, *, category: str, age: timedelta, now: datetime = NOW) -> str:
    row = db.execute(
        "INSERT INTO audit_logs (action, category, details, created_at)"
        " VALUES ('test.action', %s, %s, %s) RETURNING id",
        (category, Jsonb({}), now - age),
    ).fetchone()
    return str(row[0])


def ids(db: psycopg.Connection, table: str) -> set[str]:
    query = psycopg.sql.SQL("SELECT id FROM {}").format(psycopg.sql.Identifier(table))
    return {str(row[0]) for row in db.execute(query)}


def job_runs(db: psycopg.Connection) -> list[dict[str, Any]]:
    cur = db.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        "SELECT job, scheduled_for, trigger, status, worker_id, summary FROM worker.job_runs ORDER BY id"
    ).fetchall()
