"""The fake Twilio + Resend server in a process of its own, as the benchmark's provider.

A separate process, so its CPU time is not charged to the writer's timing or the worker's.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from testkit.bench.processes import REPO
from testkit.fake_providers import worker_env

#: What identifies a benchmark message: a booking reference, or an OTP recipient.
_KEY = re.compile(r"BENCH-\w+-\d+|otp-\w+-\d+@bench\.example")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeProviderProcess:
    """`python -m testkit.fake_providers` on a free port, controlled over its HTTP API."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (workdir / "fake-providers.log").open("ab")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FakeProviderProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "testkit.fake_providers", "--port", str(self.port)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self._call("GET", "/_fake/requests")
                return self
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError("the fake provider did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        self._log.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def worker_env(self) -> dict[str, str]:
        """Settings that point the worker's real SDKs at this fake."""
        return worker_env(self.url)

    def reset(self, latency_ms: float) -> None:
        """Forget recorded requests; answer every request after `latency_ms`."""
        self._call("POST", "/_fake/reset", {})
        for provider in ("twilio", "resend"):
            self._call("POST", "/_fake/script", {"provider": provider, "latency": latency_ms / 1000})

    def arrivals(self) -> list[dict[str, Any]]:
        """Every accepted request, with its arrival time (epoch seconds)."""
        return [r for r in self._call("GET", "/_fake/requests") if r["status"] < 300]

    def first_arrival_by_key(self, keys: dict[str, float]) -> dict[str, float]:
        """For each wanted key, when the first request mentioning it arrived."""
        first: dict[str, float] = {}
        for record in self.arrivals():
            for key in set(_KEY.findall(json.dumps(record["body"]))):
                if key in keys and (key not in first or record["time"] < first[key]):
                    first[key] = record["time"]
        return first
