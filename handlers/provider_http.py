"""What the two provider transports share: a client-side rate limit, Retry-After, connection bounds.

`twilio_transport` and `resend_transport` import this module, and `transports` (the factory that
picks a transport per channel) imports them lazily; nothing here imports either, so there is no
circle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.settings import Settings


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Retry-After in seconds (the providers send seconds), or None."""
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


class RateLimiter:
    """Spaces requests to at most `rate` per second, allowing a burst of up to `rate` (GCRA)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.burst = max(1.0, rate) * self.interval
        self._tat = 0.0  # theoretical arrival time of the next request

    async def acquire(self, interrupt: asyncio.Event | None = None) -> None:
        """Wait for this request's turn; returns early once `interrupt` is set (shutdown)."""
        now = time.monotonic()
        tat = max(self._tat, now)
        self._tat = tat + self.interval
        wait = tat + self.interval - self.burst - now
        if wait <= 0:
            return
        if interrupt is None:
            await asyncio.sleep(wait)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(interrupt.wait(), wait)


def provider_connection_limit(settings: Settings) -> int:
    """Connections one provider's HTTP session may hold open at once.

    An event sends at most three WhatsApp messages or two emails at a time, so every message of
    WORKER_CONCURRENCY events fits; aiohttp's default of 100 would queue requests behind a slow
    provider (50 events x 3 WhatsApp), while a bound still keeps a runaway from exhausting sockets.
    """
    return 4 * settings.worker_concurrency


def loop_running() -> bool:
    """Create HTTP sessions up front when a loop runs (the daemon), so the first message
    does not pay for them; otherwise on first use."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
