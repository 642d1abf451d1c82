"""The real daemon as a separate process, with fast liveness settings for fault tests."""

from __future__ import annotations

import socket
from pathlib import Path

from testkit.bench.processes import REPO, DaemonProcess

__all__ = ["FAST_ENV", "REPO", "WorkerProcess", "free_port"]

#: Fast liveness settings so fault tests finish in seconds.
FAST_ENV = {
    "LOG_LEVEL": "INFO",
    "POLL_INTERVAL_SECONDS": "1",
    "HEARTBEAT_SECONDS": "0.5",
    "STALE_AFTER_SECONDS": "3",
    "SCHEDULER_ENABLED": "false",
    "SHUTDOWN_GRACE_SECONDS": "5",
}


class WorkerProcess(DaemonProcess):
    """`flavor-worker run` with FAST_ENV under the given extra environment."""

    def __init__(self, conninfo: str, log_path: Path, **env: str) -> None:
        super().__init__(conninfo, log_path, {**FAST_ENV, **env})


def free_port() -> int:
    """A TCP port nothing listens on right now (for a daemon's PORT, a pooler, a fake)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
