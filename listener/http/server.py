"""uvicorn serving the app on the daemon's own event loop, stopped together with the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import structlog
import uvicorn
from starlette.types import ASGIApp

log = structlog.get_logger(__name__)

#: In-flight requests (a cron run, a webhook) get this long to finish at shutdown.
GRACEFUL_SHUTDOWN_SECONDS = 5


class _DaemonOwnedSignals(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM/SIGINT to the daemon, which stops it explicitly."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """Binds at `start()` (so a busy port fails the start, loudly) and serves until `stop()`."""

    def __init__(self, app: ASGIApp, port: int, host: str = "0.0.0.0") -> None:
        self.host = host
        self.requested_port = port
        self._server = _DaemonOwnedSignals(
            uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                lifespan="off",
                server_header=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            )
        )
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        return self._socket.getsockname()[1] if self._socket else self.requested_port

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._socket = sock
        # Connections arriving before uvicorn accepts wait in the listen backlog, not refused.
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")
        log.info("http.started", port=self.port)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), release the port."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            if self._socket is not None:
                self._socket.close()
            self._task = None
            log.info("http.stopped")
