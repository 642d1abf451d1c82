"""The shared rate limit's cost: bulk requests of one moment share one booking statement, and their
slots stay one interval apart (tests/test_rate_limits.py measures the rate at the provider)."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from core.db import create_pool
from core.settings import Settings
from handlers.contract import TransientDeliveryError
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


@pytest.mark.parametrize("moment", ["before its first step", "while it waits for a connection"])
async def test_requests_waiting_for_a_cancelled_booking_are_answered(db_url: str, moment: str) -> None:
    """The booking of a moment's slots is a task of its own: cancelled (a shutdown), whenever,
    every request it was booking for gets an error to retry on; none hangs."""
    pool = create_pool(db_url, max_size=2)
    await pool.open()
    held = []
    try:
        limiter = SharedRateLimiter(pool, "twilio", 200.0, Settings())
        if moment != "before its first step":  # its statement cannot get a connection yet
            held = [await pool.getconn() for _ in range(2)]
        requests = [asyncio.create_task(limiter.acquire()) for _ in range(5)]
        await asyncio.sleep(0.05 if held else 0)
        assert limiter._booker is not None
        limiter._booker.cancel()
        outcomes = await asyncio.wait_for(asyncio.gather(*requests, return_exceptions=True), 5)
    finally:
        for conn in held:
            await pool.putconn(conn)
        await pool.close()
    assert all(isinstance(outcome, TransientDeliveryError) for outcome in outcomes), outcomes
