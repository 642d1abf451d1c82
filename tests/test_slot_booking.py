"""The shared rate limit's cost: bulk requests of one moment share one booking statement, and their
slots stay one interval apart (tests/test_rate_limits.py measures the rate at the provider)."""

from __future__ import annotations

import asyncio
import time

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
        clock_before = clock(db_url)
        before = pool.get_stats()["requests_num"]
        loop = asyncio.get_running_loop()

        async def one() -> float:
            await limiter.acquire()
            return loop.time()

        started, wall_start = loop.time(), time.time()
        released = sorted(await asyncio.gather(*(one() for _ in range(30))))
        statements = pool.get_stats()["requests_num"] - before
        # How far the 30 moved the clock from where they found it (its next free slot, or now).
        booked = clock(db_url) - max(clock_before, wall_start)
    finally:
        await pool.close()
    # 30 requests at once: a batch holds at most 0.25 s of slots (45 at 200/s), so one or two
    # statements (a few more if some wake too late for their slot and book again), not 30: each
    # request took a pooled connection of its own before.
    assert statements <= 5
    interval = (1 + SPACING_MARGIN) / 200.0
    # Still one slot each: the clock moved by 30 slots (a few more for late wakers), and the
    # requests were spread over 29 intervals, as when each booked alone.
    assert 29 * interval <= booked <= 35 * interval
    assert released[-1] - started >= 29 * interval * 0.9


def clock(db_url: str) -> float:
    """The provider clock's next free slot, in epoch seconds."""
    with psycopg.connect(db_url) as conn:
        query = "SELECT extract(epoch FROM tat) FROM worker.rate_limits WHERE provider = 'twilio'"
        row = conn.execute(query).fetchone()
    assert row is not None
    return float(row[0])
