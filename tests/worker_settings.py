"""Settings for in-process workers in tests: fast liveness and retries, no scheduler, no .env."""

from __future__ import annotations

from typing import Any

from core.settings import Settings


def fast_settings(db_url: str, **overrides: Any) -> Settings:
    """Seconds where production uses minutes; `overrides` win."""
    values: dict[str, Any] = {
        "database_url": db_url,
        "poll_interval_seconds": 0.2,
        "heartbeat_seconds": 0.5,
        "stale_after_seconds": 3,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "worker_concurrency": 8,
        "scheduler_enabled": False,
        **overrides,
    }
    return Settings(**values)
