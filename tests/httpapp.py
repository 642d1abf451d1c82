"""The HTTP surface in-process, on a real database and a real LISTEN stream, for httpx to call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from core.db import create_pool
from core.settings import Settings
from listener.http import Surface, create_app
from listener.stream import EventStream
from scheduler.service import JobScheduler
from tests.waiting import async_wait_until

BASE_URL = "http://worker.test"


@dataclass
class LiveSurface:
    client: httpx.AsyncClient
    surface: Surface
    stream: EventStream
    scheduler: JobScheduler | None


@contextlib.asynccontextmanager
async def live_surface(
    db_url: str, *, with_scheduler: bool = False, circuits: Sequence[Any] = (), **overrides: Any
) -> AsyncIterator[LiveSurface]:
    """The app over a pool and a LISTEN stream of `db_url`; the stream is connected on entry.

    `with_scheduler` gives the surface a real `JobScheduler`, not started: the test drives it.
    """
    values: dict[str, Any] = {"database_url": db_url, "scheduler_enabled": with_scheduler, **overrides}
    settings = Settings(**values)
    pool = create_pool(db_url, 4)
    await pool.open()
    scheduler = JobScheduler(pool, settings) if with_scheduler else None
    stream = EventStream(db_url, asyncio.Event(), ping_seconds=0.5)
    listening = asyncio.create_task(stream.run())
    surface = Surface(settings, pool, stream, scheduler, circuits)
    transport = httpx.ASGITransport(app=create_app(surface))
    try:
        await async_wait_until(_connected(stream), timeout=10, message="LISTEN connection up")
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield LiveSurface(client, surface, stream, scheduler)
    finally:
        if scheduler is not None:
            await scheduler.shutdown()
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await pool.close()


def _connected(stream: EventStream):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return stream.connected

    return check
