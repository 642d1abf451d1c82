"""What stands between the sending code and a provider's API: its quota, its circuit, and shutdown.

One `ProviderGuard` wraps each provider transport (Twilio, Resend; the console, null and in-app
transports need none), and every request passes its three checks, in this order:

1. the circuit (`handlers/circuit.py`): while the provider is failing, fail at once;
2. the quota (`handlers/rate_limit.py`, shared by every worker): wait for the account's rate,
   at most a second or so, or be thrown back to retry later;
3. the shutdown gate: once the worker is stopping, no new request starts. A request already
   under way finishes (within PROVIDER_TIMEOUT_SECONDS, inside the shutdown grace), so its
   answer, and so its ledger record, is never lost to a cancellation: a deploy sends nothing
   twice. A message stopped here is retried by the next worker, its attempt not counted.
"""

from __future__ import annotations

import asyncio

from handlers.circuit import CircuitBreaker
from handlers.contract import PermanentDeliveryError, TransientDeliveryError
from handlers.delivery import Message, Sent, Transport
from handlers.rate_limit import SharedRateLimiter


class ProviderGuard:
    """A provider transport behind its circuit, its quota and the shutdown gate."""

    def __init__(self, inner: Transport, breaker: CircuitBreaker, limiter: SharedRateLimiter) -> None:
        self.inner = inner
        self.breaker = breaker
        self.limiter = limiter
        self.name = inner.name
        self._stopping = asyncio.Event()

    def stop_sending(self) -> None:
        """Start no new request from now on (the worker is shutting down)."""
        self._stopping.set()

    async def send(self, message: Message) -> Sent:
        self._refuse_if_stopping()
        probe = await self.breaker.before_request()
        answered = False
        try:
            await self.limiter.acquire(urgent=message.urgent)
            self._refuse_if_stopping()
            try:
                sent = await self.inner.send(message)
            except TransientDeliveryError as exc:
                answered = True
                if exc.throttled:  # a 429: the provider is up, only busy
                    self.breaker.succeeded()
                else:
                    self.breaker.failed()
                raise
            except PermanentDeliveryError:
                answered = True
                self.breaker.succeeded()  # the provider answered: it is up, the message is the problem
                raise
            answered = True
            self.breaker.succeeded()
            return sent
        finally:
            if probe and not answered:
                self.breaker.probe_abandoned()

    def _refuse_if_stopping(self) -> None:
        if self._stopping.is_set():
            raise TransientDeliveryError(
                f"{self.name}: not sent, the worker is stopping", code="shutdown", retry_after=0,
                throttled=True,
            )

    async def close(self) -> None:
        await self.inner.close()
