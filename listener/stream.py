"""The dedicated LISTEN connection: the doorbell that wakes the claim loop.

It carries no event data: a notification (or a reconnect, after which anything may have been
missed) only sets `wake`; the claim loop then reads the table, which is the truth.
"""

from __future__ import annotations

import asyncio

import psycopg
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from core.db import connect_listener
from core.metrics import METRICS

log = structlog.get_logger(__name__)

CHANNEL = "worker_events"


class EventStream:
    """Keeps a LISTEN connection open, reconnecting with backoff for as long as it runs."""

    def __init__(self, conninfo: str, wake: asyncio.Event, ping_seconds: float = 5.0) -> None:
        self.conninfo = conninfo
        self.wake = wake
        self.ping_seconds = ping_seconds
        self.connected = False
        self.backend_pid: int | None = None
        self._connections = 0

    async def run(self) -> None:
        """Listen until cancelled; a lost connection leads to a reconnect, never to an exit."""
        while True:
            conn = await self._connect()
            try:
                await self._listen(conn)
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("listener.disconnected", error=str(exc))
            except Exception:  # anything else: never fall back to polling alone for good
                log.exception("listener.crashed")
                await asyncio.sleep(1.0)
            finally:
                self.connected = False
                self.backend_pid = None
                await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection:
        """Connect and LISTEN, retrying with jittered exponential backoff (fresh per outage)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((psycopg.OperationalError, OSError)),
            wait=wait_exponential_jitter(multiplier=0.2, max=10.0),
            before_sleep=self._log_retry,
        )
        async for attempt in retrying:
            with attempt:
                conn = await connect_listener(self.conninfo)
                try:
                    await conn.execute(f"LISTEN {CHANNEL}")
                except BaseException:
                    await conn.close()
                    raise
        return conn

    async def _listen(self, conn: psycopg.AsyncConnection) -> None:
        self.connected = True
        self.backend_pid = conn.info.backend_pid
        self._connections += 1
        if self._connections == 1:
            log.info("listener.connected", channel=CHANNEL)
        else:
            log.info("listener.reconnected", channel=CHANNEL)
            METRICS.reconnects.inc()
        # Whatever was committed while we were away is in the table: go and look.
        self.wake.set()
        while True:
            async for _ in conn.notifies(timeout=self.ping_seconds):
                self.wake.set()
            # A quiet period: prove the connection is alive (a dead path raises here).
            await conn.execute("SELECT 1")

    @staticmethod
    def _log_retry(state) -> None:  # type: ignore[no-untyped-def]
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "listener.connect_failed",
            error=str(error),
            attempt=state.attempt_number,
            retry_in_s=round(state.next_action.sleep, 2) if state.next_action else None,
        )
