"""The HTTP surface in-process, on a real database and a real LISTEN stream, for httpx to call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from listener.db import create_pool
from listener.http import Surface, create_app
from listener.http.surface import SchedulerState
from listener.settings import Settings
from listener.stream import EventStream
from tests.waiting import async_wait_until

BASE_URL = "http://worker.test"


@dataclass
class LiveSurface:
    client: httpx.AsyncClient
    surface: Surface
    stream: EventStream


@contextlib.asynccontextmanager
async def live_surface(
    db_url: str, scheduler: SchedulerState | None = None, **overrides: Any
) -> AsyncIterator[LiveSurface]:
    """The app over a pool and a LISTEN stream of `db_url`; the stream is connected on entry."""
    values: dict[str, Any] = {"database_url": db_url, "scheduler_enabled": scheduler is not None, **overrides}
    settings = Settings(_env_file=None, **values)
    pool = create_pool(db_url, 4)
    await pool.open()
    stream = EventStream(db_url, asyncio.Event(), ping_seconds=0.5)
    listening = asyncio.create_task(stream.run())
    surface = Surface(settings, pool, stream, scheduler)
    transport = httpx.ASGITransport(app=create_app(surface))
    try:
        await async_wait_until(_connected(stream), timeout=10, message="LISTEN connection up")
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield LiveSurface(client, surface, stream)
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await pool.close()


def _connected(stream: EventStream):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return stream.connected

    return check
