"""The platform's reminder jobs (`src/jobs/reminders.ts`), as outbox events the pipeline delivers.

A reminder is a `booking.reminder_due` / `booking.payment_due` row in `worker.events` with the
dedup key `<kind>:<booking id>`: a second run, or two workers running at once, cannot insert it
twice, and "sent" counts only the rows this run inserted. The notifications handler sends the
WhatsApp and email messages and writes the in-app `notifications` rows, with its retries.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from core.settings import Settings
from scheduler.batches import repeat_in_batches
from scheduler.queries import QUERIES

log = structlog.get_logger(__name__)


async def send_booking_reminders(
    pool: AsyncConnectionPool, settings: Settings, now: datetime
) -> dict[str, Any]:
    """Confirmed bookings (deposit_verified, accepted) starting within BOOKING_REMINDER_HOURS."""
    until = now + timedelta(hours=settings.booking_reminder_hours)
    return await _enqueue(
        pool, settings, "bookingReminders", "enqueue_booking_reminders", "booking.reminder_due", now, until
    )


async def send_payment_reminders(
    pool: AsyncConnectionPool, settings: Settings, now: datetime
) -> dict[str, Any]:
    """Deposit-paid bookings with a balance left, not cancelled, starting within PAYMENT_REMINDER_DAYS."""
    until = now + timedelta(days=settings.payment_reminder_days)
    return await _enqueue(
        pool, settings, "paymentReminders", "enqueue_payment_reminders", "booking.payment_due", now, until
    )


async def _enqueue(
    pool: AsyncConnectionPool,
    settings: Settings,
    step: str,
    query: str,
    kind: str,
    now: datetime,
    until: datetime,
) -> dict[str, Any]:
    params = {"now": now, "until": until, "limit": settings.cleanup_batch_size}

    async def batch(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
        async with conn.transaction():
            rows = await (await conn.execute(QUERIES[query], params)).fetchall()
            if rows:
                await conn.execute(QUERIES["notify_worker_events"], {"kind": kind})
        for (booking_id,) in rows:
            log.info("job.reminder_enqueued", kind=kind, booking_id=booking_id)
        return {"sent": len(rows)}

    return await repeat_in_batches(pool, step, batch, settings.cleanup_batch_size, "sent")


async def run_all_reminder_jobs(
    pool: AsyncConnectionPool, settings: Settings, now: datetime
) -> dict[str, Any]:
    """Both reminder steps in sequence; the platform's summary keys."""
    return {
        "bookingReminders": await send_booking_reminders(pool, settings, now),
        "paymentReminders": await send_payment_reminders(pool, settings, now),
    }
