"""Operator commands on the outbox: list, show, retry. Plain reads and writes by named query."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.settings import Settings
from listener.queries import QUERIES


def list_events(conninfo: str, status: str | None, limit: int) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        return conn.execute(QUERIES["list_events"], {"status": status, "limit": limit}).fetchall()


def show_event(conninfo: str, event_id: int, settings: Settings) -> dict[str, Any] | None:
    """The event with its ledger rows, or None when there is no such event. `run_at` is its next
    try while it is pending; `deadline` is when its retries end (its kind's deadline, or its
    own expiry if sooner)."""
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        params = {
            "id": event_id,
            "deadlines": Jsonb(settings.event_deadlines),
            "default_deadline": settings.event_deadline_seconds,
        }
        event = conn.execute(QUERIES["show_event"], params).fetchone()
        if event is not None:
            event["deliveries"] = conn.execute(
                QUERIES["event_deliveries"], {"id": event_id}
            ).fetchall()
        return event


def retry_events(conninfo: str, event_id: int | None) -> list[int]:
    """Requeue one finished event, or every failed one; returns the requeued ids.

    The ledger is kept for what went out, so a requeued event only sends what was not sent
    (its failed deliveries are tried again).
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(QUERIES["retry_events"], {"id": event_id}).fetchall()
        if rows:
            conn.execute("SELECT pg_notify('worker_events', 'retry')")
    return [row[0] for row in rows]
