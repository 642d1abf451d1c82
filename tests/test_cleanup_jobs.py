"""The cleanup jobs on rows written at their boundaries, against a real database and a fixed clock."""

from __future__ import annotations

import re
from datetime import timedelta

import psycopg
import pytest

from scheduler.cleanup import (
    cleanup_expired_otps,
    cleanup_old_audit_logs,
    cleanup_old_notifications,
    cleanup_stale_bookings,
    prune_delivery_callbacks,
    prune_inbound_messages,
    prune_worker_events,
    stale_booking_reason,
)
from scheduler.queries import QUERIES
from scheduler.runs import run_job_now
from tests.appdata import add_booking, add_client, add_performer, events
from tests.jobtools import (
    NOW,
    add_audit_log,
    add_notification,
    add_otp,
    fixed_clock,
    ids,
    job_runs,
    job_settings,
    open_pool,
)


async def test_stale_bookings_cancelled_only_past_24h_without_deposit(
    db: psycopg.Connection, db_url: str
) -> None:
    client, performer = add_client(db), add_performer(db)
    fresh = add_booking(db, client, performer, created_at=NOW - timedelta(hours=23, minutes=59))
    stale = add_booking(db, client, performer, created_at=NOW - timedelta(hours=24, minutes=1))
    paid = add_booking(db, client, performer, created_at=NOW - timedelta(days=3), deposit_paid_at=NOW)
    approved = add_booking(db, client, performer, created_at=NOW - timedelta(days=3), status="approved")
    settings = job_settings(db_url)

    async with open_pool(db_url) as pool:
        result = await cleanup_stale_bookings(pool, settings, NOW)

    assert result == {"cancelled": 1, "errors": [], "batches": 1}
    statuses = dict(db.execute("SELECT id::text, status FROM bookings").fetchall())
    assert statuses == {fresh: "pending", stale: "cancelled", paid: "pending", approved: "approved"}
    reason = db.execute("SELECT cancellation_reason FROM bookings WHERE id = %s", (stale,)).fetchone()[0]
    assert reason == stale_booking_reason(settings)
    audit = db.execute("SELECT action, category, entity_type, entity_id, details FROM audit_logs").fetchall()
    assert len(audit) == 1
    action, category, entity_type, entity_id, details = audit[0]
    assert (action, category, entity_type, entity_id) == (
        "booking.auto_cancelled",
        "booking",
        "booking",
        stale,
    )
    assert details["reason"] == reason
    # The cancellation reaches the parties through the normal trigger -> event path, with the reason.
    cancelled = [e for e in events(db) if e["kind"] == "booking.cancelled"]
    assert [(e["subject_id"], e["payload"]["reason"]) for e in cancelled] == [(stale, reason)]


async def test_read_notifications_past_retention_deleted_unread_kept(
    db: psycopg.Connection, db_url: str
) -> None:
    recent = add_notification(db, age=timedelta(days=29), read=True)
    old = add_notification(db, age=timedelta(days=31), read=True)
    unread_old = add_notification(db, age=timedelta(days=400), read=False)

    async with open_pool(db_url) as pool:
        result = await cleanup_old_notifications(pool, job_settings(db_url), NOW)

    assert result["deleted"] == 1 and result["errors"] == []
    assert ids(db, "notifications") == {recent, unread_old}
    assert old not in ids(db, "notifications")


async def test_expired_otps_deleted_valid_kept(db: psycopg.Connection, db_url: str) -> None:
    just_expired = add_otp(db, expires_in=-timedelta(seconds=1))
    valid = add_otp(db, expires_in=timedelta(seconds=1))
    long_gone = add_otp(db, expires_in=-timedelta(days=2))

    async with open_pool(db_url) as pool:
        result = await cleanup_expired_otps(pool, job_settings(db_url), NOW)

    assert result["deleted"] == 2
    assert ids(db, "otp_codes") == {valid}
    assert not {just_expired, long_gone} & ids(db, "otp_codes")


async def test_audit_logs_past_90_days_deleted_except_critical_categories(
    db: psycopg.Connection, db_url: str
) -> None:
    kept, deleted = set(), set()
    for category in ("system", "booking", "security", "fraud", "dispute"):
        kept.add(add_audit_log(db, category=category, age=timedelta(days=89)))
        old = add_audit_log(db, category=category, age=timedelta(days=91))
        (kept if category in ("security", "fraud", "dispute") else deleted).add(old)

    async with open_pool(db_url) as pool:
        result = await cleanup_old_audit_logs(pool, job_settings(db_url), NOW)

    assert result["deleted"] == 2
    assert ids(db, "audit_logs") == kept


async def test_finished_worker_events_pruned_with_their_deliveries(
    db: psycopg.Connection, db_url: str
) -> None:
    def add_event(status: str, finished_days_ago: float | None) -> int:
        finished = NOW - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
        return db.execute(
            "INSERT INTO worker.events (kind, status, finished_at) VALUES ('test.kind', %s, %s) RETURNING id",
            (status, finished),
        ).fetchone()[0]

    old_done = add_event("done", 15)
    old_failed = add_event("failed", 15)
    recent_done = add_event("done", 13)
    pending = add_event("pending", None)
    for event_id in (old_done, recent_done):
        db.execute(
            "INSERT INTO worker.deliveries (event_id, channel, recipient, status)"
            " VALUES (%s, 'email', 'a@x', 'sent')",
            (event_id,),
        )

    async with open_pool(db_url) as pool:
        result = await prune_worker_events(pool, job_settings(db_url), NOW)

    assert (result["deleted"], result["deliveries"], result["errors"]) == (2, 1, [])
    remaining = {row[0] for row in db.execute("SELECT id FROM worker.events")}
    assert remaining == {recent_done, pending}
    assert [r[0] for r in db.execute("SELECT event_id FROM worker.deliveries")] == [recent_done]
    assert old_failed not in remaining


async def test_stored_status_callbacks_are_applied_then_pruned(db: psycopg.Connection, db_url: str) -> None:
    event_id = db.execute(
        "INSERT INTO worker.events (kind, status) VALUES ('booking.accepted', 'done') RETURNING id"
    ).fetchone()[0]
    # Ledger rows written as 'sent' in the instant their callback was being stored, and one already read.
    for recipient, message_id, status in (
        ("+61400000002", "SMlate", "sent"),
        ("+61400000003", "SMread", "read"),
    ):
        db.execute(
            "INSERT INTO worker.deliveries (event_id, channel, recipient, status, provider_message_id)"
            " VALUES (%s, 'whatsapp', %s, %s, %s)",
            (event_id, recipient, status, message_id),
        )

    def store(message_id: str, status: str, age: timedelta, error_code: str | None = None) -> None:
        db.execute(
            "INSERT INTO worker.delivery_callbacks"
            " (provider_message_id, channel, status, error_code, received_at)"
            " VALUES (%s, 'whatsapp', %s, %s, %s)",
            (message_id, status, error_code, NOW - age),
        )

    store("SMlate", "undelivered", timedelta(minutes=5), error_code="63016")
    store("SMread", "delivered", timedelta(minutes=5))  # older news than the ledger row: never undoes read
    store("SMother-app", "delivered", timedelta(days=15))  # never ours: gone after the retention period
    store("SMsoon", "delivered", timedelta(minutes=5))  # its ledger row is still to come

    async with open_pool(db_url) as pool:
        result = await prune_delivery_callbacks(pool, job_settings(db_url), NOW)

    assert (result["deleted"], result["applied"], result["errors"]) == (3, 1, [])
    ledger = dict(
        db.execute("SELECT provider_message_id, (status, error_code) FROM worker.deliveries").fetchall()
    )
    assert ledger == {"SMlate": ("undelivered", "63016"), "SMread": ("read", None)}
    remaining = db.execute("SELECT provider_message_id FROM worker.delivery_callbacks").fetchall()
    assert remaining == [("SMsoon",)]


async def test_answered_inbound_messages_are_pruned_after_the_retention(
    db: psycopg.Connection, db_url: str
) -> None:
    for message_sid, age in (("SMold", timedelta(days=15)), ("SMrecent", timedelta(days=1))):
        db.execute(
            "INSERT INTO worker.inbound_messages (message_sid, action, reply, received_at)"
            " VALUES (%s, 'help', 'Flavor Entertainers commands', %s)",
            (message_sid, NOW - age),
        )

    async with open_pool(db_url) as pool:
        result = await prune_inbound_messages(pool, job_settings(db_url), NOW)

    assert result == {"deleted": 1, "errors": [], "batches": 1}
    assert db.execute("SELECT message_sid FROM worker.inbound_messages").fetchall() == [("SMrecent",)]


async def test_deletes_proceed_in_bounded_batches(db: psycopg.Connection, db_url: str) -> None:
    for _ in range(10):
        add_notification(db, age=timedelta(days=40), read=True)

    async with open_pool(db_url) as pool:
        result = await cleanup_old_notifications(pool, job_settings(db_url, cleanup_batch_size=3), NOW)

    # 3 + 3 + 3 + 1: four statements, none touching more than three rows.
    assert result == {"deleted": 10, "errors": [], "batches": 4}
    assert ids(db, "notifications") == set()


async def test_run_job_now_cleanup_prints_the_cron_summary_and_records_the_run(
    db: psycopg.Connection, db_url: str
) -> None:
    client, performer = add_client(db), add_performer(db)
    add_booking(db, client, performer, created_at=NOW - timedelta(days=2))
    add_notification(db, age=timedelta(days=31), read=True)
    add_otp(db, expires_in=-timedelta(hours=1))
    add_audit_log(db, category="system", age=timedelta(days=100))

    async with open_pool(db_url) as pool:
        result = await run_job_now(pool, job_settings(db_url), "cleanup", clock=fixed_clock())

    assert result["success"] is True
    assert result["timestamp"] == "2026-03-10T09:00:00.000Z"
    summary = result["summary"]
    assert {k: (v.get("cancelled", v.get("deleted")), v["errors"]) for k, v in summary.items()} == {
        "staleBookings": (1, []),
        "notifications": (1, []),
        "otps": (1, []),
        "auditLogs": (1, []),
        "workerEvents": (0, []),
        "deliveryCallbacks": (0, []),
        "inboundMessages": (0, []),
    }
    [run] = job_runs(db)
    assert (run["job"], run["trigger"], run["status"]) == ("cleanup", "manual", "succeeded")
    assert run["summary"] == result


async def test_one_failing_step_does_not_stop_the_others(db: psycopg.Connection, db_url: str) -> None:
    add_notification(db, age=timedelta(days=31), read=True)
    add_audit_log(db, category="system", age=timedelta(days=100))
    # The platform calls otp_codes optional: a deployment without it must still clean the rest.
    db.execute("DROP TABLE otp_codes")

    async with open_pool(db_url) as pool:
        result = await run_job_now(pool, job_settings(db_url), "cleanup", clock=fixed_clock())

    assert result["success"] is False
    assert len(result["summary"]["otps"]["errors"]) == 1
    assert "otp_codes" in result["summary"]["otps"]["errors"][0]
    assert result["summary"]["notifications"] == {"deleted": 1, "errors": [], "batches": 1}
    assert result["summary"]["auditLogs"]["deleted"] == 1
    assert job_runs(db)[0]["status"] == "failed"


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("cancel_stale_bookings", "bookings_stale_pending_idx"),
        ("delete_old_read_notifications", "notifications_read_created_idx"),
        ("delete_expired_otps", "otp_codes_expires_idx"),
        ("delete_old_audit_logs", "audit_logs_created_idx"),
        ("prune_finished_events", "events_finished_idx"),
        ("prune_inbound_messages", "inbound_messages_received_idx"),
        ("enqueue_booking_reminders", "bookings_confirmed_start_idx"),
        ("enqueue_payment_reminders", "bookings_deposit_paid_start_idx"),
    ],
)
def test_every_job_selection_is_served_by_an_index(db: psycopg.Connection, query: str, index: str) -> None:
    params = {"now": NOW, "cutoff": NOW, "until": NOW, "limit": 10, "reason": "r", "keep": ["security"]}
    with db.transaction(force_rollback=True):
        # The tables are tiny here; forbid sequential scans so the plan shows what a big table gets.
        db.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in db.execute("EXPLAIN " + QUERIES[query], params))
    assert re.search(rf"\b{index}\b", plan), plan
