"""Rows written the way the booking app writes them: plain SQL on the app's tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg


def add_client(conn: psycopg.Connection, **values: Any) -> str:
    row = {
        "full_name": "Ann Client",
        "email": "ann@example.com",
        "phone": "0400 000 002",
        **values,
    }
    return _insert(conn, "clients", row)


def add_performer(conn: psycopg.Connection, **values: Any) -> str:
    row = {
        "stage_name": "DJ Nova",
        "full_name": "Nova Performer",
        "email": "nova@example.com",
        "phone": "+61400000003",
        **values,
    }
    return _insert(conn, "performers", row)


def add_booking(conn: psycopg.Connection, client_id: str, performer_id: str, **values: Any) -> str:
    row = {
        "client_id": client_id,
        "performer_id": performer_id,
        "event_type": "Birthday party",
        "event_start": datetime.now(UTC) + timedelta(days=10),
        "venue": "12 Harbour St, Sydney",
        "total_amount": 800,
        "deposit_amount": 200,
        **values,
    }
    return _insert(conn, "bookings", row)


def add_party(conn: psycopg.Connection, **booking_values: Any) -> tuple[str, str, str]:
    """A client, a performer and a booking between them: (booking, client, performer) ids."""
    client = add_client(conn)
    performer = add_performer(conn)
    return add_booking(conn, client, performer, **booking_values), client, performer


def add_bookings(conn: psycopg.Connection, count: int) -> None:
    """`count` bookings of one new client and performer, in one transaction (one burst of events)."""
    client, performer = add_client(conn), add_performer(conn)
    with conn.transaction():
        for _ in range(count):
            add_booking(conn, client, performer)


def add_login_code(conn: psycopg.Connection, email: str, code: str = "123456") -> str:
    """An OTP row as the app writes one at a login screen (its trigger queues the email)."""
    return _insert(conn, "otp_codes", {
        "email": email, "code": code, "purpose": "login",
        "expires_at": datetime.now(UTC) + timedelta(minutes=10),
    })


def _insert(conn: psycopg.Connection, table: str, row: dict[str, Any]) -> str:
    columns = psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(c) for c in row)
    values = psycopg.sql.SQL(", ").join(psycopg.sql.Placeholder() for _ in row)
    query = psycopg.sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        psycopg.sql.Identifier(table), columns, values
    )
    return str(conn.execute(query, list(row.values())).fetchone()[0])


def events(conn: psycopg.Connection, *, status: str | None = None) -> list[dict[str, Any]]:
    query = "SELECT id, kind, subject_id, payload, status, attempts, last_error FROM worker.events"
    params: list[Any] = []
    if status:
        query += " WHERE status = %s"
        params.append(status)
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(query + " ORDER BY id", params).fetchall()


def status_counts(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT status, count(*) FROM worker.events GROUP BY status").fetchall())
