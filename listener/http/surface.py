"""What the endpoints read of the running daemon, and the queue statistics they share."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from psycopg_pool import AsyncConnectionPool

from core.metrics import METRICS
from core.settings import Settings
from handlers.routing import ROUTES
from listener.queries import QUERIES

#: A health probe must answer quickly even when the database does not.
DATABASE_TIMEOUT_SECONDS = 3.0


class ListenerState(Protocol):
    """What health needs of the LISTEN stream (`listener.stream.EventStream`)."""

    @property
    def connected(self) -> bool: ...


class SchedulerState(Protocol):
    """What health needs of the embedded scheduler."""

    @property
    def running(self) -> bool: ...


class CircuitState(Protocol):
    """What health needs of a provider's circuit breaker (`handlers.circuit.CircuitBreaker`)."""

    provider: str
    state: str

    def open_for(self) -> float: ...
class WorkerState(Protocol):
    """What health needs of the claim loop (`listener.worker.Worker`): what fails right now."""

    @property
    def failing(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Surface:
    """The daemon's live parts the endpoints read; `scheduler` is None when it is disabled,
    `worker` when the surface runs without a claim loop (tests of the endpoints alone)."""

    settings: Settings
    pool: AsyncConnectionPool
    listener: ListenerState
    scheduler: SchedulerState | None = None
    circuits: Sequence[CircuitState] = ()
    worker: WorkerState | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    pending: int
    oldest_pending_seconds: float


async def read_queue_stats(pool: AsyncConnectionPool) -> QueueStats:
    """Due pending events and the age of the oldest; raises if the database does not answer in time."""

    async def query() -> QueueStats:
        async with pool.connection(timeout=DATABASE_TIMEOUT_SECONDS) as conn:
            cur = await conn.execute(QUERIES["queue_stats"])
            pending, oldest = await cur.fetchone()
        return QueueStats(int(pending), float(oldest))

    stats = await asyncio.wait_for(query(), DATABASE_TIMEOUT_SECONDS)
    METRICS.pending_events.set(stats.pending)
    METRICS.oldest_pending_seconds.set(stats.oldest_pending_seconds)
    return stats


#: Every (event kind, channel) the routing table has, as the backlog query's two arrays.
_KIND_CHANNELS = sorted({(kind, route.channel) for kind, routes in ROUTES.items() for route in routes})
_BACKLOG_PARAMS = {"kinds": [k for k, _ in _KIND_CHANNELS], "channels": [c for _, c in _KIND_CHANNELS]}
_CHANNELS = sorted({channel for _, channel in _KIND_CHANNELS})


async def read_channel_backlog(pool: AsyncConnectionPool) -> dict[str, tuple[int, float]]:
    """Per channel: open events with a message on it not yet in the ledger, and the oldest
    one's age; sets the per-channel gauges (0 for a channel with none)."""

    async def query() -> dict[str, tuple[int, float]]:
        async with pool.connection(timeout=DATABASE_TIMEOUT_SECONDS) as conn:
            cur = await conn.execute(QUERIES["channel_backlog"], _BACKLOG_PARAMS)
            return {channel: (int(n), float(age)) for channel, n, age in await cur.fetchall()}

    backlog = await asyncio.wait_for(query(), DATABASE_TIMEOUT_SECONDS)
    for channel in _CHANNELS:
        messages, oldest = backlog.get(channel, (0, 0.0))
        METRICS.pending_deliveries.labels(channel).set(messages)
        METRICS.oldest_pending_delivery_seconds.labels(channel).set(oldest)
    return backlog
