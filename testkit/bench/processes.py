"""The real daemon as a separate process, as a dyno would run it (used by the bench and the tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent


class DaemonProcess:
    """A running `flavor-worker run`; its JSON log lines go to `log_path`."""

    def __init__(self, conninfo: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "RESEND_"))}
        full_env.update({"DATABASE_URL": conninfo, "PYTHONUNBUFFERED": "1", "LOG_FORMAT": "json"})
        full_env.update(env or {})
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

    def wait_for_log(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events_logged(name)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode} before logging {name}")
            time.sleep(0.05)
        raise TimeoutError(f"worker did not log {name} within {timeout}s")

    def rss_mb(self) -> float:
        """Resident memory of the worker process, from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS for the worker process")

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
