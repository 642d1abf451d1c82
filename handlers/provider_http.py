"""What the two provider transports share: Retry-After, connection bounds, session creation.

`twilio_transport` and `resend_transport` import this module, and `transports` (the factory that
picks a transport per channel) imports them lazily; nothing here imports either, so there is no
circle.
"""

from __future__ import annotations

import asyncio
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
