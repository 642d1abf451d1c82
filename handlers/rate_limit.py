"""Provider rate limits shared by every worker through PostgreSQL (`worker.rate_limits`, sql/009).

Resend allows RESEND_RATE_PER_SECOND requests per API key and Twilio TWILIO_RATE_PER_SECOND per
account, however many worker processes send. Each provider has one clock row; a request books the
next free slot on it with ONE statement (`take_rate_slot`) and sleeps until its slot.

* **One statement for many**: bulk requests of this process that want a slot at the same time
  (an event's three WhatsApp messages, a batch of events) share one booking of as many
  consecutive slots (`_book_together`): one round trip and one row lock for all of them, instead
  of one each, which at a few hundred messages a second queued the claim loop's own statements
  behind the limiter's for the pool's connections (bench at 200 bookings/s through the SDKs:
  p99 102 ms before this, 28-36 ms after). A batch never holds more slots than fit in the bulk
  lead, so the clock is booked at most about twice that lead ahead (see "Urgent first").

* **Spacing** (GCRA without burst): slots are `(1 + SPACING_MARGIN) / rate` apart, a little more
  than `1 / rate`, so that rate + 1 consecutive requests span one second plus SPACING_MARGIN
  seconds: one request may reach the provider that much later than the next one's and still
  not crowd it into the same second. A request that wakes up later than that past its slot
  (a busy event loop) does not use it: it books another.
* **Urgent first**: an urgent request (an OTP email: someone is waiting at a login screen) may
  book up to RATE_LIMIT_URGENT_MAX_WAIT_SECONDS ahead. Bulk requests may only book the next slot
  (at most `BULK_LEAD_SECONDS` ahead, or one interval if longer), and one process's bulk
  requests that find the clock full take turns to book (one of them at a time), so the clock is never
  booked far ahead with bulk: whatever the bulk backlog, an urgent request finds at most twice
  that lead and one interval in front of it (a batch booked when the clock was just within the
  lead). Under a strict per-second quota it cannot do better: a slot already promised to a bulk
  request cannot be given away. (Bulk requests first try to book at once, together: only when
  the clock is full do they join the turns.)
* **Throttled, not stuck**: a bulk request that cannot book within RATE_LIMIT_MAX_WAIT_SECONDS
  raises `TransientDeliveryError(code="throttled", throttled=True)` instead of holding its event's slot; the
  event is retried later, and what was already sent for it is in the ledger. Its `retry_after`
  is when this process's queue of bulk requests should have drained, so throttled events come
  back spread out rather than all at once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from core.queries import load_queries
from handlers.contract import TransientDeliveryError

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from core.settings import Settings

TAKE_SLOT = load_queries(Path(__file__).with_name("queries.sql"))["take_rate_slot"]
#: Extra spacing between slots, as a share of the nominal interval (see the module docstring).
SPACING_MARGIN = 0.1
#: A request that wakes up this much later than its slot books another one instead.
LATE_TOLERANCE_SECONDS = SPACING_MARGIN / 2
#: Slots a request may miss that way before its event is retried later instead.
MAX_MISSED_SLOTS = 3
#: How far ahead bulk requests may book at least: room for the next booker's wake-up and round
#: trip, so the provider is kept busy at its rate.
BULK_LEAD_SECONDS = 0.25


class SharedRateLimiter:
    """One provider's request rate, shared by all workers; see the module docstring."""

    def __init__(self, pool: AsyncConnectionPool, provider: str, rate: float, settings: Settings) -> None:
        self.pool = pool
        self.provider = provider
        self.interval = (1 + SPACING_MARGIN) / rate
        self.max_wait = settings.rate_limit_max_wait_seconds
        self.urgent_horizon = settings.rate_limit_urgent_max_wait_seconds
        self.bulk_horizon = min(self.max_wait, max(self.interval, BULK_LEAD_SECONDS))
        self._turn = asyncio.Lock()  # one bulk booker of this process asks the database at a time
        self._queued = 0  # bulk requests of this process waiting for a slot
        #: Bulk requests waiting to be booked together, and the task booking them.
        self._together: list[asyncio.Future[tuple[float | None, float]]] = []
        self._booker: asyncio.Task[None] | None = None
        self._booking: list[asyncio.Future[tuple[float | None, float]]] = []  # its statement's
        self._batch_limit = max(1, int(self.bulk_horizon / self.interval))

    async def acquire(self, *, urgent: bool = False) -> None:
        """Return at this request's slot, or raise `TransientDeliveryError(code="throttled")`."""
        loop = asyncio.get_running_loop()
        for _ in range(MAX_MISSED_SLOTS):
            if urgent:
                wait, backlog = await self._book(self.urgent_horizon)
            else:
                wait, backlog = await self._book_together()
                if wait is None:
                    wait, backlog = await self._bulk_slot()
            if wait is None:
                break
            slot = loop.time() + wait
            await asyncio.sleep(wait)
            if loop.time() - slot <= LATE_TOLERANCE_SECONDS:
                return
        raise TransientDeliveryError(
            f"{self.provider}: throttled by the shared rate limit",
            retry_after=max(backlog, self.interval),
            code="throttled",
            throttled=True,
        )

    async def _bulk_slot(self) -> tuple[float | None, float]:
        """Take this process's bulk turn and book a slot within RATE_LIMIT_MAX_WAIT_SECONDS;
        (None, when to retry) when that is not possible."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        self._queued += 1
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._turn.acquire()
            except TimeoutError:
                return None, self._queued * self.interval
            try:
                while True:
                    wait, backlog = await self._book(self.bulk_horizon)
                    bookable_in = max(backlog - self.bulk_horizon, self.interval / 10)
                    if wait is not None or loop.time() + bookable_in > deadline:
                        return wait, max(backlog, self._queued * self.interval)
                    await asyncio.sleep(bookable_in)
            finally:
                self._turn.release()
        finally:
            self._queued -= 1

    async def _book_together(self) -> tuple[float | None, float]:
        """A bulk slot booked in one statement with the other bulk requests of this moment:
        (seconds until this request's slot or None when the clock is full, backlog)."""
        waiting: asyncio.Future[tuple[float | None, float]] = asyncio.get_running_loop().create_future()
        self._together.append(waiting)
        if self._booker is None or self._booker.done():
            self._booker = asyncio.create_task(self._book_waiting(), name=f"{self.provider}-slots")
            self._booker.add_done_callback(self._booker_ended)
        return await waiting

    async def _book_waiting(self) -> None:
        """Book the waiting requests' slots, `_batch_limit` at a time, until none is left. A
        task of its own: a request cancelled while it waits cannot strand the others."""
        while self._together:
            batch = self._booking = self._together[: self._batch_limit]
            del self._together[: len(batch)]
            try:
                first, backlog = await self._book(self.bulk_horizon, len(batch))
            except TransientDeliveryError as exc:
                self._booking = []
                _answer_with(batch, exc)
                continue
            self._booking = []  # (left as it is when cancelled: `_booker_ended` answers them)
            for position, waiting in enumerate(batch):
                if not waiting.done():  # a cancelled request's slot goes unused
                    waiting.set_result((None if first is None else first + position * self.interval, backlog))

    def _booker_ended(self, booker: asyncio.Task[None]) -> None:
        """The booking task was cancelled (a shutdown, even before its first step) or failed (a
        bug): no request it was booking for, or that waited for it, may wait for ever."""
        if not booker.cancelled() and booker.exception() is None:
            return  # it ended with nobody left waiting
        reason = "cancelled" if booker.cancelled() else type(booker.exception()).__name__
        failure = TransientDeliveryError(
            f"{self.provider}: rate limit unavailable ({reason})", code="rate_limit"
        )
        stranded = [*self._booking, *(self._together if booker is self._booker else [])]
        _answer_with(stranded, failure)

    async def _book(self, horizon: float, count: int = 1) -> tuple[float | None, float]:
        """(seconds until the first of `count` booked slots or None, seconds the clock was
        booked ahead)."""
        params = {"provider": self.provider, "interval": self.interval, "horizon": horizon, "count": count}
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(TAKE_SLOT, params)
                row = await cur.fetchone()
        except psycopg.Error as exc:  # no shared clock, no sending: the event retries later
            raise TransientDeliveryError(
                f"{self.provider}: rate limit unavailable: {type(exc).__name__}", code="database"
            ) from None
        assert row is not None
        wait, backlog = row
        return (None if wait is None else max(0.0, wait)), max(0.0, backlog)


def _answer_with(waiting: list[asyncio.Future[tuple[float | None, float]]], exc: BaseException) -> None:
    """Fail every request of `waiting` that has no answer yet (cancelled ones have theirs)."""
    for request in waiting:
        if not request.done():
            request.set_exception(exc)
