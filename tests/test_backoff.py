"""Retry delays: exponential growth, a cap, jitter within bounds, Retry-After as a floor."""

from __future__ import annotations

import random

from core.backoff import retry_delay


def test_delays_grow_exponentially_and_stay_under_the_cap() -> None:
    rng = random.Random(7)
    ceilings = [min(60.0, 2.0 * 2 ** (n - 1)) for n in range(1, 12)]
    for attempts, ceiling in enumerate(ceilings, start=1):
        for _ in range(50):
            delay = retry_delay(attempts, base=2.0, cap=60.0, rng=rng)
            assert 1.0 <= delay <= ceiling


def test_jitter_spreads_a_burst() -> None:
    rng = random.Random(1)
    delays = {round(retry_delay(5, base=2.0, cap=3600.0, rng=rng), 3) for _ in range(100)}
    assert len(delays) > 90


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    rng = random.Random(3)
    assert retry_delay(1, base=2.0, cap=3600.0, retry_after=30.0, rng=rng) == 30.0
    assert retry_delay(1, base=2.0, cap=10.0, retry_after=120.0, rng=rng) == 120.0
