"""Retry delays for events: exponential, capped, with full jitter, honouring Retry-After."""

from __future__ import annotations

import random


def retry_delay(
    attempts: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt `attempts + 1`.

    Jitter (uniform in [base/2, min(cap, base * 2^(attempts-1))]) spreads a burst of failures so
    they do not return together, while never retrying sooner than half the base delay; a
    provider's Retry-After is a floor, never shortened by jitter.
    """
    ceiling = min(cap, base * 2 ** max(0, attempts - 1))
    delay = (rng or random).uniform(base / 2, ceiling) if ceiling > base / 2 else ceiling
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, max(cap, retry_after or 0.0))
