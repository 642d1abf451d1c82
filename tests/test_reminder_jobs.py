"""The reminder jobs: which bookings get a reminder event, and never twice (sequential or concurrent)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import psycopg

from scheduler.reminders import run_all_reminder_jobs, send_booking_reminders, send_payment_reminders
from scheduler.runs import run_job_now
from tests.appdata import add_booking, add_client, add_performer, events
from tests.jobtools import NOW, fixed_clock, job_runs, job_settings, open_pool


def scheduler_events(db: psycopg.Connection, kind: str) -> list[dict]:
    return [e for e in events(db) if e["kind"] == kind]


async def test_booking_reminders_for_confirmed_bookings_starting_within_24h(
    db: psycopg.Connection, db_url: str
) -> None:
    client, performer = add_client(db), add_performer(db)

    def booking(status: str, starts_in: timedelta) -> str:
        return add_booking(db, client, performer, status=status, event_start=NOW + starts_in)

    verified_23h = booking("deposit_verified", timedelta(hours=23))
    accepted_1h = booking("accepted", timedelta(minutes=30))
    at_24h = booking("accepted", timedelta(hours=24))
    booking("deposit_verified", timedelta(hours=24, minutes=1))
    booking("pending", timedelta(hours=2))
    booking("approved", timedelta(hours=2))
    booking("cancelled", timedelta(hours=2))
    booking("accepted", -timedelta(minutes=1))

    async with open_pool(db_url) as pool:
        result = await send_booking_reminders(pool, job_settings(db_url), NOW)

    assert result == {"sent": 3, "errors": [], "batches": 1}
    reminders = {e["subject_id"]: e for e in scheduler_events(db, "booking.reminder_due")}
    assert set(reminders) == {verified_23h, accepted_1h, at_24h}
    assert reminders[verified_23h]["payload"] == {"booking_id": verified_23h, "hours_until_event": 23}
    assert reminders[accepted_1h]["payload"]["hours_until_event"] == 1
    row = db.execute(
        "SELECT dedup_key, expires_at FROM worker.events"
        " WHERE subject_id = %s AND kind = 'booking.reminder_due'",
        (verified_23h,),
    ).fetchone()
    assert row == (f"booking.reminder_due:{verified_23h}", NOW + timedelta(hours=23))


async def test_payment_reminders_for_deposit_paid_bookings_with_a_balance_within_3_days(
    db: psycopg.Connection, db_url: str
) -> None:
    client, performer = add_client(db), add_performer(db)

    def booking(
        starts_in: timedelta, *, paid: Decimal, deposit: bool = True, status: str = "deposit_verified"
    ) -> str:
        return add_booking(
            db,
            client,
            performer,
            status=status,
            event_start=NOW + starts_in,
            total_amount=Decimal("800"),
            amount_paid=paid,
            deposit_paid_at=NOW - timedelta(days=5) if deposit else None,
        )

    owing = booking(timedelta(days=2), paid=Decimal("200"))
    owing_at_3_days = booking(timedelta(days=3), paid=Decimal("799.50"), status="accepted")
    booking(timedelta(days=2), paid=Decimal("800"))  # paid in full
    booking(timedelta(days=2), paid=Decimal("0"), deposit=False, status="approved")  # no deposit yet
    booking(timedelta(days=2), paid=Decimal("200"), status="cancelled")
    booking(timedelta(days=3, minutes=1), paid=Decimal("200"))  # too far out
    booking(-timedelta(hours=1), paid=Decimal("200"))  # already started

    async with open_pool(db_url) as pool:
        result = await send_payment_reminders(pool, job_settings(db_url), NOW)

    assert result == {"sent": 2, "errors": [], "batches": 1}
    payloads = {e["subject_id"]: e["payload"] for e in scheduler_events(db, "booking.payment_due")}
    assert payloads == {
        owing: {"booking_id": owing, "outstanding": "600.00"},
        owing_at_3_days: {"booking_id": owing_at_3_days, "outstanding": "0.50"},
    }


async def test_second_run_sends_nothing(db: psycopg.Connection, db_url: str) -> None:
    client, performer = add_client(db), add_performer(db)
    add_booking(
        db,
        client,
        performer,
        status="deposit_verified",
        event_start=NOW + timedelta(hours=5),
        amount_paid=200,
        deposit_paid_at=NOW - timedelta(days=1),
    )

    async with open_pool(db_url) as pool:
        first = await run_job_now(pool, job_settings(db_url), "reminders", clock=fixed_clock())
        # An hour later the booking is still in both windows: still nothing new.
        second = await run_job_now(
            pool, job_settings(db_url), "reminders", clock=fixed_clock(NOW + timedelta(hours=1))
        )

    assert first["summary"]["bookingReminders"]["sent"] == 1
    assert first["summary"]["paymentReminders"]["sent"] == 1
    assert second["success"] is True
    assert second["summary"]["bookingReminders"] == {"sent": 0, "errors": [], "batches": 1}
    assert second["summary"]["paymentReminders"] == {"sent": 0, "errors": [], "batches": 1}
    assert len(scheduler_events(db, "booking.reminder_due")) == 1
    assert len(scheduler_events(db, "booking.payment_due")) == 1
    assert [r["status"] for r in job_runs(db)] == ["succeeded", "succeeded"]


async def test_concurrent_runs_do_not_double_reminders(db: psycopg.Connection, db_url: str) -> None:
    client, performer = add_client(db), add_performer(db)
    with db.transaction():
        db.execute("SET LOCAL flavor_worker.silence = 'on'")
        for minutes in range(40):
            add_booking(
                db,
                client,
                performer,
                status="accepted",
                event_start=NOW + timedelta(hours=1, minutes=minutes),
            )
    settings = job_settings(db_url, cleanup_batch_size=4)

    # Two pools, as two worker processes would have; the job functions bypass the job lock.
    async with open_pool(db_url) as first, open_pool(db_url) as second:
        results = await asyncio.gather(
            *(run_all_reminder_jobs(pool, settings, NOW) for pool in (first, second, first, second))
        )

    assert sum(r["bookingReminders"]["sent"] for r in results) == 40
    assert all(r["bookingReminders"]["errors"] == [] for r in results)
    reminders = scheduler_events(db, "booking.reminder_due")
    assert len(reminders) == len({e["subject_id"] for e in reminders}) == 40


async def test_new_reminders_ring_the_worker_doorbell(db: psycopg.Connection, db_url: str) -> None:
    client, performer = add_client(db), add_performer(db)
    add_booking(db, client, performer, status="accepted", event_start=NOW + timedelta(hours=3))
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN worker_events")
        async with open_pool(db_url) as pool:
            await send_booking_reminders(pool, job_settings(db_url), NOW)
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert payloads == ["booking.reminder_due"]


async def test_run_job_now_reminders_has_the_cron_shape(db_url: str) -> None:
    async with open_pool(db_url) as pool:
        result = await run_job_now(pool, job_settings(db_url), "reminders", "http", clock=fixed_clock())

    assert result == {
        "success": True,
        "timestamp": "2026-03-10T09:00:00.000Z",
        "summary": {
            "bookingReminders": {"sent": 0, "errors": [], "batches": 1},
            "paymentReminders": {"sent": 0, "errors": [], "batches": 1},
        },
    }
