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

from core.db import DatabaseUnavailable, create_pool, redacted_target, wait_for_database
from core.settings import Settings
from handlers.router import NotificationRouter
from listener.checks import listen_problem
from listener.migrate import migrate, pending_migrations
from listener.stream import EventStream
from listener.worker import Worker
from scheduler.service import JobScheduler

if TYPE_CHECKING:
    from listener.http import HttpServer

log = structlog.get_logger(__name__)


class StartRefused(RuntimeError):
    """The daemon cannot do its job with this database: the message says why, in one line."""


def preflight(settings: Settings, conninfo: str, session_conninfo: str) -> None:
    """What must hold before the daemon starts, else it would run half-working; raises StartRefused.

    The database answers (waited for, up to DATABASE_WAIT_SECONDS, saying so); its schema has
    every migration this install ships (the embedded database is migrated instead); and a
    NOTIFY is heard through the session connection. Behind a transaction pooler without
    LISTEN_DATABASE_URL the worker would claim and send but never hear the doorbell, and its
    migrations' and jobs' session locks would not hold: it refuses, with `check`'s words.
    """
    try:
        wait_for_database(conninfo, settings.database_wait_seconds)
    except DatabaseUnavailable as exc:
        raise StartRefused(str(exc)) from None
    ensure_schema(conninfo, session_conninfo, auto_migrate=settings.database_url is None)
    variable = "LISTEN_DATABASE_URL" if settings.listen_database_url else "DATABASE_URL"
    problem = listen_problem(session_conninfo, variable)
    if problem:
        raise StartRefused(problem)


def ensure_schema(conninfo: str, session_conninfo: str, *, auto_migrate: bool) -> None:
    """Refuse to start on an old schema (or migrate it, for the embedded database)."""
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        missing = pending_migrations(conn)
    if not missing:
        return
    if not auto_migrate:
        names = ", ".join(m.path.name for m in missing)
        raise StartRefused(f"database schema is behind ({names}); run `flavor-worker migrate`")
    migrate(session_conninfo, reference_schema=True)


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


async def run_daemon(
    settings: Settings, conninfo: str, session_conninfo: str, *, prepare: bool = False
) -> None:
    """Run until SIGTERM/SIGINT; return after a graceful shutdown. The work goes through
    `conninfo` (which may be a transaction pooler); LISTEN through `session_conninfo`.
    `prepare`: `conninfo` is known to keep a session (core.db.create_pool)."""
    pool = create_pool(conninfo, settings.db_pool_max_size, prepare=prepare)
    await pool.open(wait=False)
    handler = build_handler(settings, pool)
    worker = Worker(pool, handler, settings)
    stream = EventStream(session_conninfo, worker.wake, ping_seconds=max(1.0, settings.poll_interval_seconds))
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

        surface = Surface(settings, pool, stream, scheduler, circuits=handler.circuits(), worker=worker)
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
