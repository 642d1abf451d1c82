"""The real router in an in-process worker, talking to the fake Twilio + Resend over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg.rows import dict_row

from core.db import create_pool
from core.settings import Settings
from listener.daemon import build_handler
from listener.stream import EventStream
from listener.worker import Worker
from testkit.fake_providers import FakeProviders
from tests.appdata import status_counts
from tests.waiting import async_wait_until
from tests.worker_settings import fast_settings

ADMIN_WHATSAPP = "+61 400 000 001"
ADMIN_EMAIL = "Admin@Flavor.example"
TWILIO_TOKEN = "twilio-secret-token-value"
RESEND_KEY = "re_secret_api_key_value"


def provider_settings(db_url: str, fake: FakeProviders | None, **overrides: Any) -> Settings:
    """Fast worker settings; Twilio and Resend pointed at `fake` (console transport when None)."""
    values: dict[str, Any] = {
        "retry_max_seconds": 0.3,
        "worker_concurrency": 16,
        "admin_whatsapp": ADMIN_WHATSAPP,
        "admin_email": ADMIN_EMAIL,
        "resend_rate_per_second": 200,
        "twilio_rate_per_second": 200,
        "provider_timeout_seconds": 2,
        "circuit_open_seconds": 0.2,
        "circuit_max_open_seconds": 0.5,
    }
    if fake is not None:
        values |= {
            "twilio_account_sid": "AC" + "0" * 32,
            "twilio_auth_token": TWILIO_TOKEN,
            "twilio_whatsapp_number": "+14155238886",
            "twilio_api_base_url": fake.url,
            "resend_api_key": RESEND_KEY,
            "resend_api_url": fake.url,
        }
    return fast_settings(db_url, **(values | overrides))


@contextlib.asynccontextmanager
async def running_router(settings: Settings) -> AsyncIterator[Worker]:
    """The daemon's own handler (build_handler) in a worker with its LISTEN stream."""
    assert settings.database_url
    pool = create_pool(settings.database_url, 4)
    await pool.open()
    handler = build_handler(settings, pool)
    worker = Worker(pool, handler, settings)
    stream = EventStream(settings.database_url, worker.wake, ping_seconds=1)
    tasks = [asyncio.create_task(stream.run()), asyncio.create_task(worker.run())]
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(tasks[1], 30)
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        await handler.close()
        await pool.close()


async def wait_finished(db: psycopg.Connection, total: int, timeout: float = 20) -> dict[str, int]:
    """Wait until `total` events are done/failed/expired; returns the status counts."""

    async def finished() -> dict[str, int] | None:
        counts = status_counts(db)
        over = sum(counts.get(s, 0) for s in ("done", "failed", "expired"))
        return (
            counts if over >= total and not counts.get("pending") and not counts.get("processing") else None
        )

    return await async_wait_until(finished, timeout=timeout, message=f"{total} events finished")


def ledger(db: psycopg.Connection) -> list[dict[str, Any]]:
    cur = db.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT d.event_id, e.kind, d.channel, d.recipient, d.recipient_role, d.template, d.status,"
        " d.provider_message_id, d.error_code, d.attempts FROM worker.deliveries d"
        " JOIN worker.events e ON e.id = d.event_id ORDER BY d.event_id, d.id"
    ).fetchall()
