"""Each trigger writes exactly the right event, in the same transaction, and nothing else."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.appdata import add_party, events


def test_booking_insert_emits_booking_created(db: psycopg.Connection) -> None:
    booking, _, _ = add_party(db)

    [event] = events(db)
    assert event["kind"] == "booking.created"
    assert event["subject_id"] == booking
    assert event["status"] == "pending"
    assert event["payload"] == {"booking_id": booking, "status": "pending"}


@pytest.mark.parametrize(
    "status",
    ["approved", "deposit_uploaded", "deposit_verified", "accepted", "completed", "cancelled"],
)
def test_status_change_emits_booking_status_event(db: psycopg.Connection, status: str) -> None:
    booking, _, _ = add_party(db)
    db.execute("UPDATE bookings SET status = %s WHERE id = %s", (status, booking))

    kinds = [e["kind"] for e in events(db)]
    assert kinds == ["booking.created", f"booking.{status}"]
    assert events(db)[1]["payload"]["from_status"] == "pending"


def test_cancellation_carries_the_reason(db: psycopg.Connection) -> None:
    booking, _, _ = add_party(db)
    db.execute(
        "UPDATE bookings SET status = 'cancelled', cancellation_reason = 'Venue closed' WHERE id = %s",
        (booking,),
    )
    assert events(db)[-1]["payload"]["reason"] == "Venue closed"


def test_updates_that_change_nothing_relevant_emit_nothing(db: psycopg.Connection) -> None:
    booking, _, _ = add_party(db)
    db.execute("UPDATE bookings SET venue = 'Elsewhere', total_amount = 900 WHERE id = %s", (booking,))
    db.execute("UPDATE bookings SET status = status WHERE id = %s", (booking,))
    assert [e["kind"] for e in events(db)] == ["booking.created"]


def test_otp_insert_emits_otp_created_without_the_code(db: psycopg.Connection) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=10)
    db.execute(
        "INSERT INTO otp_codes (email, code, purpose, expires_at) VALUES (%s, %s, 'login', %s)",
        ("ann@example.com", "493817", expires),
    )
    [event] = events(db)
    assert event["kind"] == "otp.created"
    assert "493817" not in str(event["payload"])
    expires_at = db.execute("SELECT expires_at FROM worker.events").fetchone()[0]
    assert expires_at == expires


def test_vetting_decision_emits_once(db: psycopg.Connection) -> None:
    app_id = db.execute(
        "INSERT INTO vetting_applications (full_name, email) VALUES ('Vee', 'vee@example.com') RETURNING id"
    ).fetchone()[0]
    db.execute("UPDATE vetting_applications SET review_notes = 'looking' WHERE id = %s", (app_id,))
    assert events(db) == []
    db.execute("UPDATE vetting_applications SET status = 'rejected' WHERE id = %s", (app_id,))
    [event] = events(db)
    assert event["kind"] == "vetting.decided"
    assert event["payload"]["decision"] == "rejected"


def test_silenced_transaction_emits_nothing(db: psycopg.Connection) -> None:
    with db.transaction():
        db.execute("SET LOCAL flavor_worker.silence = 'on'")
        booking, _, _ = add_party(db)
        db.execute("UPDATE bookings SET status = 'approved' WHERE id = %s", (booking,))
    assert events(db) == []
    # Only that transaction was silenced.
    db.execute("UPDATE bookings SET status = 'accepted' WHERE id = %s", (booking,))
    assert [e["kind"] for e in events(db)] == ["booking.accepted"]


def test_rolled_back_change_leaves_no_event(db: psycopg.Connection) -> None:
    with pytest.raises(RuntimeError), db.transaction():
        add_party(db)
        raise RuntimeError("app failed after insert")
    assert events(db) == []


def test_notify_rings_on_commit(db_url: str, db: psycopg.Connection) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN worker_events")
        add_party(db)
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert notes and notes[0].payload == "booking.created"


def test_app_role_without_worker_privileges_can_write(db: psycopg.Connection) -> None:
    """The app's own role (e.g. Supabase's `authenticated`) has no rights on schema worker."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE ROLE {role}")
    try:
        db.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        db.execute(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}")
        db.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
        with db.transaction():
            db.execute(f"SET LOCAL ROLE {role}")
            booking, _, _ = add_party(db)
            db.execute("UPDATE bookings SET status = 'approved' WHERE id = %s", (booking,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
                db.execute("SELECT count(*) FROM worker.events")  # really no rights on worker
    finally:
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")
    assert [e["kind"] for e in events(db)] == ["booking.created", "booking.approved"]
