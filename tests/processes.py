"""The real daemon as a separate process (`python -m listener run`), for fault tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: Fast liveness settings so fault tests finish in seconds.
FAST_ENV = {
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "POLL_INTERVAL_SECONDS": "1",
    "HEARTBEAT_SECONDS": "0.5",
    "STALE_AFTER_SECONDS": "3",
    "SCHEDULER_ENABLED": "false",
    "SHUTDOWN_GRACE_SECONDS": "5",
}


class WorkerProcess:
    """A running `flavor-worker run`; its JSON log lines are kept in a file for assertions."""

    def __init__(self, conninfo: str, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "RESEND_"))}
        full_env.update(FAST_ENV)
        full_env.update({"DATABASE_URL": conninfo, "PYTHONUNBUFFERED": "1"})
        full_env.update(env)
        self._log_file = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "listener", "run"],
            cwd=REPO,
            env=full_env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                lines.append({"event": "raw", "text": raw})
        return lines

    def events_logged(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("event") == name]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log_file.close()
