"""Connections: the work pool, the dedicated LISTEN connection, and the database URL itself.

Without DATABASE_URL the worker starts an embedded PostgreSQL in a local data folder, so the
zero-configuration run and the demo need nothing but Python.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from core.redaction import mask_text
from core.settings import Settings

log = structlog.get_logger(__name__)

#: TCP keepalives so a silently dead network path is noticed in seconds, not hours.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


#: application_name of the LISTEN connection, so operators can find it in pg_stat_activity.
LISTENER_APPLICATION_NAME = "flavor-worker:listen"


def tuned_conninfo(conninfo: str, application_name: str = "flavor-worker") -> str:
    """Name the connection; add TCP keepalives unless the URL chose its own (not for unix sockets)."""
    params = conninfo_to_dict(conninfo)
    extra: dict[str, object] = {}
    if "application_name" not in params:
        extra["application_name"] = application_name
    if "connect_timeout" not in params:  # a black-holed network must not hang a reconnect
        extra["connect_timeout"] = 10
    if not str(params.get("host") or "").startswith("/"):
        extra.update({k: v for k, v in KEEPALIVES.items() if k not in params})
    return make_conninfo(conninfo, **extra)


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL when set, else the embedded server (started on first use)."""
    if settings.database_url:
        return settings.database_url
    from core.embedded import start_embedded_server

    return start_embedded_server(Path(settings.embedded_data_dir))


def redacted_target(conninfo: str) -> str:
    """host:port/dbname of a conninfo, for logs; never the user's password."""
    params = conninfo_to_dict(conninfo)
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"


#: How the pool's connections are opened: autocommit (explicit transactions where needed), and
#: no server-side prepared statements unless `create_pool(prepare=True)`.
WORK_CONNECTION_KWARGS: dict[str, object] = {"autocommit": True, "prepare_threshold": None}

#: psycopg's own default: a statement is prepared on the server after this many executions, so
#: the claim, the batch's message data and the outcomes are, and one-off statements are not.
PREPARE_THRESHOLD = 5


def create_pool(conninfo: str, max_size: int, *, prepare: bool = False) -> AsyncConnectionPool:
    """The pool the claim loop, the ledger and the jobs share (autocommit; explicit transactions).

    `prepare`: let psycopg prepare the statements it runs often. Only where `conninfo` keeps a
    session: behind a transaction pooler (Supabase's port 6543, PgBouncer in transaction mode)
    consecutive statements of one client run on different server connections, and psycopg's
    named statements (`_pg3_0`, ...) collide with other clients' or vanish. `run` prepares when
    DATABASE_URL also serves LISTEN (no LISTEN_DATABASE_URL), which its preflight has proven
    keeps a session (a transaction pooler loses the LISTEN, and `run` refuses to start on one).
    What it saves, measured with the null-transport drain (20,000 events, the same code with
    and without, three interleaved rounds, 2026-12-04): database CPU 79-99 us per event instead
    of 103-125 (README "Performance" has the wall-clock figures, and their noise).
    """
    kwargs = {**WORK_CONNECTION_KWARGS, "prepare_threshold": PREPARE_THRESHOLD if prepare else None}
    return AsyncConnectionPool(
        tuned_conninfo(conninfo),
        min_size=2,
        max_size=max(2, max_size),
        kwargs=kwargs,
        # No per-checkout ping (a round trip on every query): a connection broken by a server
        # restart fails its statement once, the caller retries, and the pool replaces it.
        open=False,
        name="flavor-worker",
    )


async def connect_listener(conninfo: str) -> psycopg.AsyncConnection:
    """A dedicated autocommit connection for LISTEN (never taken from the pool), to the session
    URL (`Settings.session_database_url`): a transaction pooler would forget the LISTEN."""
    return await psycopg.AsyncConnection.connect(
        tuned_conninfo(conninfo, LISTENER_APPLICATION_NAME), autocommit=True
    )


class DatabaseUnavailable(RuntimeError):
    """The database did not answer within the wait `run` allows it."""


#: How often `database.waiting` repeats while the database stays unreachable.
WAITING_REPORT_SECONDS = 5.0
#: The longest pause between two connection attempts.
WAITING_RETRY_MAX_SECONDS = 2.0


def wait_for_database(conninfo: str, timeout: float) -> None:
    """Return once the database accepts a connection; raise `DatabaseUnavailable` after `timeout`.

    A worker often starts before its database (a restart of both, a release racing a failover):
    waiting is right, but waiting in silence looks like a hang. The first refusal is logged at
    once, with where and how long, then every WAITING_REPORT_SECONDS.
    """
    started = time.monotonic()
    next_report = started
    pause = 0.1
    while True:
        remaining = timeout - (time.monotonic() - started)
        try:
            with psycopg.connect(conninfo, connect_timeout=max(1, min(5, round(remaining)))):
                return
        except psycopg.OperationalError as exc:
            error = mask_text((str(exc).strip().splitlines() or [type(exc).__name__])[0])
            waited = time.monotonic() - started
            if waited >= timeout:
                raise DatabaseUnavailable(
                    f"database {redacted_target(conninfo)} unreachable for {waited:.0f}s: {error}"
                ) from None
            if time.monotonic() >= next_report:
                log.warning(
                    "database.waiting",
                    target=redacted_target(conninfo),
                    error=error,
                    waited_s=round(waited, 1),
                    retry_every_s=WAITING_RETRY_MAX_SECONDS,
                    gives_up_after_s=timeout,
                )
                next_report = time.monotonic() + WAITING_REPORT_SECONDS
        time.sleep(min(pause, max(0.0, timeout - (time.monotonic() - started))))
        pause = min(WAITING_RETRY_MAX_SECONDS, pause * 2)
