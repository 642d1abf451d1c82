"""The platform's cleanup jobs (`src/jobs/cleanup.ts`), plus pruning of the worker's own outbox.

Jobs only write rows: a stale booking's cancellation reaches the parties through the bookings
trigger → `booking.cancelled` event → delivery path, like any cancellation made by the app.
Every step takes `now` from the caller's clock and deletes in bounded batches.
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


def stale_booking_reason(settings: Settings) -> str:
    """The cancellation reason the parties read in their cancellation messages."""
    return (
        f"Automatically cancelled: the deposit was not received within "
        f"{settings.stale_booking_hours:g} hours of booking."
    )


async def cleanup_stale_bookings(
    pool: AsyncConnectionPool, settings: Settings, now: datetime
) -> dict[str, Any]:
    """Cancel pending bookings older than STALE_BOOKING_HOURS without a deposit, audit each."""
    params = {
        "cutoff": now - timedelta(hours=settings.stale_booking_hours),
        "reason": stale_booking_reason(settings),
        "limit": settings.cleanup_batch_size,
    }

    async def batch(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
        rows = await (await conn.execute(QUERIES["cancel_stale_bookings"], params)).fetchall()
        for (booking_id,) in rows:
            log.info("job.booking_cancelled", booking_id=booking_id, reason="stale_pending")
        return {"cancelled": len(rows)}

    return await repeat_in_batches(pool, "staleBookings", batch, settings.cleanup_batch_size, "cancelled")


async def cleanup_old_notifications(
    pool: AsyncConnectionPool, settings: Settings, now: datetime
) -> dict[str, Any]:
    """Delete read notifications older than NOTIFICATION_RETENTION_DAYS; unread ones stay."""
    cutoff = now - timedelta(days=settings.notification_retention_days)
    return await _delete_in_batches(
        pool, settings, "notifications", "delete_old_read_notifications", {"cutoff": cutoff}
    )


async def cleanup_expired_otps(
    pool: AsyncConnectionPool, settings: Settings, now: datetime
) -> dict[str, Any]:
    """Delete OTP codes past their expiry."""
    return await _delete_in_batches(pool, settings, "otps", "delete_expired_otps", {"now": now})


async def cleanup_old_audit_logs(
    pool: AsyncConnectionPool, settings: Settings, now: datetime
) -> dict[str, Any]:
    """Delete audit logs older than AUDIT_LOG_RETENTION_DAYS; critical categories are kept forever."""
    params = {
        "cutoff": now - timedelta(days=settings.audit_log_retention_days),
        "keep": list(settings.critical_audit_categories),
    }
    return await _delete_in_batches(pool, settings, "auditLogs", "delete_old_audit_logs", params)


async def prune_worker_events(pool: AsyncConnectionPool, settings: Settings, now: datetime) -> dict[str, Any]:
    """Delete finished outbox events (and their delivery ledger) older than WORKER_RETENTION_DAYS."""
    cutoff = now - timedelta(days=settings.worker_retention_days)
    return await _counted_in_batches(
        pool, settings, "workerEvents", "prune_finished_events", {"cutoff": cutoff}, ("deleted", "deliveries")
    )


async def prune_delivery_callbacks(
    pool: AsyncConnectionPool, settings: Settings, now: datetime
) -> dict[str, Any]:
    """Delete stored status callbacks once their ledger row has them, or past WORKER_RETENTION_DAYS.

    A callback stored in the instant its ledger row was being written is applied here first.
    """
    cutoff = now - timedelta(days=settings.worker_retention_days)
    return await _counted_in_batches(
        pool,
        settings,
        "deliveryCallbacks",
        "prune_delivery_callbacks",
        {"cutoff": cutoff},
        ("deleted", "applied"),
    )


async def prune_inbound_messages(
    pool: AsyncConnectionPool, settings: Settings, now: datetime
) -> dict[str, Any]:
    """Delete the MessageSids of answered inbound WhatsApp messages older than WORKER_RETENTION_DAYS.

    They are kept only so that Twilio's retries and replays are not applied twice.
    """
    cutoff = now - timedelta(days=settings.worker_retention_days)
    return await _delete_in_batches(
        pool, settings, "inboundMessages", "prune_inbound_messages", {"cutoff": cutoff}
    )


async def _counted_in_batches(
    pool: AsyncConnectionPool,
    settings: Settings,
    step: str,
    query: str,
    params: dict[str, Any],
    columns: tuple[str, ...],
) -> dict[str, Any]:
    """Batches of a query answering one row of counts; the first column decides when to stop."""
    bounded = {**params, "limit": settings.cleanup_batch_size}

    async def batch(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
        row = await (await conn.execute(QUERIES[query], bounded)).fetchone()
        return dict(zip(columns, row or (0,) * len(columns), strict=True))

    return await repeat_in_batches(pool, step, batch, settings.cleanup_batch_size, columns[0])


async def _delete_in_batches(
    pool: AsyncConnectionPool, settings: Settings, step: str, query: str, params: dict[str, Any]
) -> dict[str, Any]:
    bounded = {**params, "limit": settings.cleanup_batch_size}

    async def batch(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
        cursor = await conn.execute(QUERIES[query], bounded)
        return {"deleted": cursor.rowcount}

    return await repeat_in_batches(pool, step, batch, settings.cleanup_batch_size, "deleted")


async def run_all_cleanup_jobs(
    pool: AsyncConnectionPool, settings: Settings, now: datetime
) -> dict[str, Any]:
    """Every cleanup step in sequence; the platform's keys plus the worker's own tables
    (`workerEvents`, `deliveryCallbacks`, `inboundMessages`)."""
    return {
        "staleBookings": await cleanup_stale_bookings(pool, settings, now),
        "notifications": await cleanup_old_notifications(pool, settings, now),
        "otps": await cleanup_expired_otps(pool, settings, now),
        "auditLogs": await cleanup_old_audit_logs(pool, settings, now),
        "workerEvents": await prune_worker_events(pool, settings, now),
        "deliveryCallbacks": await prune_delivery_callbacks(pool, settings, now),
        "inboundMessages": await prune_inbound_messages(pool, settings, now),
    }
