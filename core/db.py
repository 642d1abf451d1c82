"""Connections: the work pool, the dedicated LISTEN connection, and the database URL itself.

Without DATABASE_URL the worker starts an embedded PostgreSQL in a local data folder, so the
zero-configuration run and the demo need nothing but Python.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

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


def create_pool(conninfo: str, max_size: int) -> AsyncConnectionPool:
    """The pool the claim loop, the ledger and the jobs share (autocommit; explicit transactions)."""
    return AsyncConnectionPool(
        tuned_conninfo(conninfo),
        min_size=2,
        max_size=max(2, max_size),
        kwargs={"autocommit": True},
        # No per-checkout ping (a round trip on every query): a connection broken by a server
        # restart fails its statement once, the caller retries, and the pool replaces it.
        open=False,
        name="flavor-worker",
    )


async def connect_listener(conninfo: str) -> psycopg.AsyncConnection:
    """A dedicated autocommit connection for LISTEN (never taken from the pool)."""
    return await psycopg.AsyncConnection.connect(
        tuned_conninfo(conninfo, LISTENER_APPLICATION_NAME), autocommit=True
    )
