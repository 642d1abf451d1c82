"""The shared rate limit's cost: bulk requests of one moment share one booking statement, and their
slots stay one interval apart (tests/test_rate_limits.py measures the rate at the provider)."""

from __future__ import annotations

import asyncio

import psycopg

from core.db import create_pool
from core.settings import Settings
from handlers.rate_limit import SPACING_MARGIN, SharedRateLimiter


async def test_an_events_messages_share_one_booking_and_keep_their_spacing(db_url: str) -> None:
    pool = create_pool(db_url, max_size=4)
    await pool.open()
    try:
        limiter = SharedRateLimiter(pool, "twilio", 200.0, Settings())
        await limiter.acquire()  # the provider's clock row exists from now on
        before = pool.get_stats()["requests_num"]
        loop = asyncio.get_running_loop()

        async def one() -> float:
            await limiter.acquire()
            return loop.time()

        started = loop.time()
        released = sorted(await asyncio.gather(*(one() for _ in range(30))))
        statements = pool.get_stats()["requests_num"] - before
    finally:
        await pool.close()
    # 30 requests at once: a batch holds at most 0.25 s of slots (45 at 200/s), so one or two
    # statements, not 30 (each request took a pooled connection of its own before).
    assert statements <= 2
    interval = (1 + SPACING_MARGIN) / 200.0
    # Still one slot each: the 30 requests are spread over 29 intervals, as when each booked alone.
    assert released[-1] - started >= 29 * interval * 0.9
    with psycopg.connect(db_url) as conn:
        ahead = conn.execute(
            "SELECT extract(epoch FROM tat - now()) FROM worker.rate_limits WHERE provider = 'twilio'"
        ).fetchone()
    assert ahead is not None and ahead[0] <= 0.25 + interval  # nothing booked beyond what was used
