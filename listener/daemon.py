"""`flavor-worker run`: wire the pool, the LISTEN stream and the claim loop into one process.

Signals: SIGTERM/SIGINT stop claiming; in-flight events get SHUTDOWN_GRACE_SECONDS to finish,
unfinished claims go back to pending, and the process exits 0 well inside Heroku's 30 s.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import TYPE_CHECKING

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from core.db import create_pool, redacted_target
from core.settings import Settings
from handlers.router import NotificationRouter
from listener.migrate import migrate, pending_migrations
from listener.stream import EventStream
from listener.worker import Worker
from scheduler.service import JobScheduler

if TYPE_CHECKING:
    from listener.http import HttpServer

log = structlog.get_logger(__name__)


class SchemaBehindError(RuntimeError):
    """The database lacks migrations this worker needs."""


@retry(
    retry=retry_if_exception_type(psycopg.OperationalError),
    wait=wait_exponential_jitter(multiplier=0.5, max=5.0),
    stop=stop_after_delay(60),
    reraise=True,
)
def ensure_schema(conninfo: str, *, auto_migrate: bool) -> None:
    """Refuse to start on an old schema (or migrate it, for the embedded database)."""
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        missing = pending_migrations(conn)
    if not missing:
        return
    if not auto_migrate:
        names = ", ".join(m.path.name for m in missing)
        raise SchemaBehindError(f"database schema is behind ({names}); run `flavor-worker migrate`")
    migrate(conninfo, reference_schema=True)


def build_handler(settings: Settings, pool: AsyncConnectionPool) -> NotificationRouter:
    """The handler the claim loop hands events to: the notification router (close it on exit)."""
    return NotificationRouter(settings, pool)


def settle_garbage_collector() -> None:
    """Move everything imported and built at start-up out of the collector's sight.

    A long-lived daemon's start-up objects (modules, SDKs, templates) never die; without this,
    every full collection walks them all and stalls the event loop for tens of milliseconds,
    which shows up directly as message latency. The youngest generation is collected every
    10,000 allocations rather than 700: each message allocates hundreds of short-lived
    containers, and at the default, collections cost a drain a tenth of its throughput.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def run_daemon(settings: Settings, conninfo: str) -> None:
    """Run until SIGTERM/SIGINT; return after a graceful shutdown."""
    pool = create_pool(conninfo, settings.db_pool_max_size)
    await pool.open(wait=False)
    handler = build_handler(settings, pool)
    worker = Worker(pool, handler, settings)
    stream = EventStream(conninfo, worker.wake, ping_seconds=max(1.0, settings.poll_interval_seconds))
    structlog.contextvars.bind_contextvars(worker_id=worker.worker_id)
    log.info("daemon.starting", database=redacted_target(conninfo))
    settle_garbage_collector()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    stream_task = asyncio.create_task(stream.run(), name="listener")
    scheduler: JobScheduler | None = None
    if settings.scheduler_enabled:
        scheduler = JobScheduler(pool, settings, worker_id=worker.worker_id)
        scheduler.start()
    http: HttpServer | None = None
    if settings.port:
        # Imported only when asked for: a worker dyno without PORT does not carry the web stack.
        from listener.http import HttpServer, Surface, create_app

        surface = Surface(settings, pool, stream, scheduler, handler.circuits())
        http = HttpServer(create_app(surface), settings.port)
    http_failed = False
    worker_task = asyncio.create_task(worker.run(), name="worker")
    stop_task = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        if http is not None:
            try:
                await http.start()
            except OSError as exc:  # e.g. the port is taken: stop cleanly, then exit non-zero
                log.error("http.cannot_start", port=settings.port, error=str(exc))
                http_failed = True
                stop.set()
        await asyncio.wait({worker_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        log.info("daemon.stopping")
        # Everything stops taking new work at once, then in-flight work gets one shared grace
        # period (SHUTDOWN_GRACE_SECONDS), so the whole exit stays inside a platform's 30 s.
        worker.stop()
        await asyncio.gather(
            http.stop() if http is not None else asyncio.sleep(0),
            scheduler.shutdown(timeout=settings.shutdown_grace_seconds)
            if scheduler is not None
            else asyncio.sleep(0),
            worker_task,
        )
    finally:
        # Idempotent: after the graceful path these return at once; after an error they clean up.
        if http is not None:
            await http.stop()
        if scheduler is not None:
            await scheduler.shutdown(timeout=1.0)
        for task in (stream_task, stop_task, worker_task):
            task.cancel()
        await asyncio.gather(stream_task, stop_task, worker_task, return_exceptions=True)
        await handler.close()
        await pool.close(timeout=3)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("daemon.stopped")
    if http_failed:
        raise SystemExit(1)
