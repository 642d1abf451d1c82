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

#: In-flight requests (a cron run, a webhook) get this long to finish at shutdown; then uvicorn
#: cancels them (a cancelled cron run records its job_runs row as failed).
GRACEFUL_SHUTDOWN_SECONDS = 1.5
#: `stop()` returns by then even if uvicorn does not (the daemon has Heroku's 30 s for everything).
STOP_TIMEOUT_SECONDS = 2.0


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

    async def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop accepting at once, give in-flight requests GRACEFUL_SHUTDOWN_SECONDS, release the port.

        Returns within about `timeout` seconds: past it, the server task is cancelled (0.5 s more at most).
        """
        if self._task is None:
            return
        # Close the listening socket now rather than on uvicorn's next 0.1 s tick.
        for server in getattr(self._server, "servers", []):  # absent until uvicorn has started
            server.close()
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=0.5)
            log.warning("http.stop_timed_out", timeout=timeout)
        finally:
            if self._socket is not None:
                self._socket.close()
            self._task = None
            log.info("http.stopped")
