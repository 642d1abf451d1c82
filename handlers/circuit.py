"""A circuit breaker per provider: stop asking a provider that keeps failing, probe, resume.

Without it, every event retries against a provider that is down, each retry counting as an
attempt, and a long outage used the events' whole retry budget (a 300 s Twilio outage failed
62 events for good). With it:

    closed ──(`failure_threshold` failures in a row)──▶ open
    open ──(`open_seconds` passed; the next request becomes the probe)──▶ half-open
    half-open ──probe accepted──▶ closed          half-open ──probe failed──▶ open, for twice as long

While open, requests fail at once with a `TransientDeliveryError` marked `throttled` whose
`retry_after` is the time until the next probe: the claim loop counts no attempt for it and
brings the event back just after the probe. Requests arriving while the probe is out wait for
its verdict (at most `probe_wait` seconds) and go on if it was accepted, so the backlog drains
at full speed as soon as the provider answers again. Only failures that say the provider is unwell count (5xx,
timeouts, refused connections); a 429 is the provider working as designed and a 4xx is the
message's own problem, so neither opens the circuit, and a 4xx closes it like a success.

The state is per process: each worker finds out on its own, at the cost of a few requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Literal

import structlog

from core.metrics import METRICS
from handlers.contract import TransientDeliveryError

log = structlog.get_logger(__name__)

CircuitState = Literal["closed", "open", "half_open"]
_GAUGE_VALUES = {"closed": 0, "open": 1, "half_open": 2}


class CircuitBreaker:
    """The state machine above, for one provider; `clock` is monotonic seconds."""

    def __init__(
        self,
        provider: str,
        *,
        failure_threshold: int,
        open_seconds: float,
        max_open_seconds: float,
        probe_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.failure_threshold = failure_threshold
        self.base_open_seconds = open_seconds
        self.max_open_seconds = max(open_seconds, max_open_seconds)
        self.clock = clock
        self.state: CircuitState = "closed"
        self.failures = 0
        self.open_seconds = open_seconds
        self.opened_at: float | None = None  # when the current outage began (first opening)
        self.probe_wait = probe_wait
        self._probe_at = 0.0
        self._verdict = asyncio.Event()  # set when the probe out has been answered
        self._set_gauge()

    async def before_request(self) -> bool:
        """Let the request through (True when it is the probe), or raise the fast failure of an
        open circuit. A probe must end in `succeeded()`, `failed()` or `probe_abandoned()`."""
        if self.state == "half_open":  # a probe is out: its verdict decides for us too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._verdict.wait(), self.probe_wait)
        if self.state == "closed":
            return False
        now = self.clock()
        if self.state == "open" and now >= self._probe_at:
            self.state = "half_open"  # this request is the probe
            self._verdict = asyncio.Event()
            self._set_gauge()
            log.info("provider.circuit_probe", provider=self.provider)
            return True
        wait = max(0.0, self._probe_at - now) if self.state == "open" else self.base_open_seconds
        raise TransientDeliveryError(
            f"{self.provider}: circuit open", code="circuit_open", retry_after=wait, throttled=True
        )

    def succeeded(self) -> None:
        if self.state != "closed":
            down = self.clock() - (self.opened_at or self.clock())
            log.info("provider.circuit_closed", provider=self.provider, open_s=round(down, 3))
        self.state, self.failures, self.opened_at = "closed", 0, None
        self.open_seconds = self.base_open_seconds
        self._verdict.set()
        self._set_gauge()

    def failed(self) -> None:
        self.failures += 1
        if self.state == "half_open":
            self.open_seconds = min(self.max_open_seconds, self.open_seconds * 2)
            self._open()
        elif self.state == "closed" and self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            self._open()

    def probe_abandoned(self) -> None:
        """The probe never reached the provider (quota, shutdown, cancelled): the next request
        probes instead, at once, rather than leaving the circuit half-open for good."""
        if self.state == "half_open":
            self.state = "open"
            self._probe_at = self.clock()
            self._verdict.set()
            self._set_gauge()

    def open_for(self) -> float:
        """Seconds since the current outage began (0 while closed)."""
        return 0.0 if self.opened_at is None else self.clock() - self.opened_at

    def _open(self) -> None:
        self.state = "open"
        self._verdict.set()
        self._probe_at = self.clock() + self.open_seconds
        self._set_gauge()
        log.warning(
            "provider.circuit_open",
            provider=self.provider,
            failures=self.failures,
            probe_in_s=round(self.open_seconds, 3),
        )

    def _set_gauge(self) -> None:
        METRICS.circuit_state.labels(self.provider).set(_GAUGE_VALUES[self.state])

