"""The claim loop: claim due events in batches, hand them to the handler, record outcomes.

Shape of one worker process:

* the claim loop waits for a wake-up (NOTIFY, the poll timer, or freed room), then claims a
  batch: up to WORKER_CONCURRENCY events run their handlers at once and up to BATCHES_AHEAD
  more batches wait, already claimed, so the next claim's round trips overlap the current work;
* each claimed event runs as its own task; each of its messages' ledger records goes to a
  buffer the moment the message is handed over (or refused), its outcome when it ends;
* the flusher writes whatever is buffered, records and outcomes, in ONE statement, however
  many arrived meanwhile: a provider's acceptance is durable within one flush, before anything
  could send that message again, even if its event never finishes here (a slow sibling
  message, SIGTERM, `kill -9`); a row the database refuses is isolated (written one by one,
  the others kept) and fails only its own event;
* a transient failure retries with backoff until the event's deadline (EVENT_DEADLINE_SECONDS,
  per kind, or its own expiry); a throttle or an open provider circuit counts no attempt;
* the heartbeat (on a connection of its own) keeps this worker's claims alive and frees the
  claims of dead workers, so a `kill -9` costs other events at most STALE_AFTER_SECONDS plus
  one heartbeat; a worker judges others only after hearing the database for that long itself,
  so an outage everyone saw is nobody's crash;
* events freed from a dead worker are suspects (sql/008): they run in groups, each group alone
  (nothing else in flight), groups back to back; a group that takes its worker down too is
  halved, so a poison event is cornered in a few crashes and its bystanders lose nothing;
* login codes (the handler's `urgent_kinds`) are claimed before older events, also while the
  loop has no room for a batch or runs suspects alone, and start at once beside the running
  handlers: a login never waits behind bulk events held for a provider's quota;
* on stop, running handlers get SHUTDOWN_GRACE_SECONDS; claimed events that never started go
  back to pending untouched.

The handler never learns how events are claimed; this module never learns what a message says.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from core.backoff import retry_delay
from core.metrics import METRICS
from core.redaction import error_first_line
from core.settings import Settings
from handlers.contract import (
    DeliveryRecord,
    Event,
    EventHandler,
    Outcome,
    TransientDeliveryError,
)
from handlers.delivery import masked_recipient
from listener.queries import QUERIES

log = structlog.get_logger(__name__)


def new_worker_id() -> str:
    """`<dyno or host>-<pid>-<random>`: readable in logs, unique across restarts."""
    host = os.environ.get("DYNO") or os.environ.get("FLY_MACHINE_ID") or socket.gethostname()
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


#: Login codes are looked for at most this often while the claim loop has no room for a batch
#: (it is woken by every flush under load): once its NOTIFY has woken the loop, a login code
#: waits at most this long for its claim.
URGENT_PROBE_SECONDS = 0.05

#: Batches claimed ahead of the running handlers. One is not enough when handlers are quick:
#: the claim and then the batch's `prepare()` each wait, once their reply is in, behind every
#: runnable handler step (asyncio runs ready callbacks first come, first served), so a batch
#: claimed when half a batch was left came in after that half was done, and the worker waited.
#: Measured with the null transport and the default 50 handlers and batches of 200, 30,000
#: events, same runs: one batch ahead 5,594-5,691 events/s, the worker idle ~10% of the drain
#: (waiting for a claim or a prepare with nothing to run); two 6,466-6,690/s; three 6,667-6,782/s.
#: Each batch ahead is events another worker cannot take meanwhile (returned untouched on
#: shutdown, suspects after a crash): two is the knee.
BATCHES_AHEAD = 2

#: Turns of the event loop the flusher yields before taking the buffers. Two suffice for a
#: handler's gather of messages to return and its outcome to be queued (measured at 200 events/s
#: with the null transport: one turn left 0.6 ms between an event's records and its outcome);
#: one more is margin.
FLUSH_SETTLE_TURNS = 3

#: How long a closing worker keeps trying to write its last records and outcomes.
CLOSING_FLUSH_SECONDS = 5.0

#: A ledger record and the id of its event.
EventRecord = tuple[int, DeliveryRecord]


@dataclass(slots=True)
class Completion:
    """A finished event waiting for the flusher."""

    event: Event
    status: str  # done | pending (retry) | failed | expired
    delay: float = 0.0
    error: str | None = None
    payload: dict[str, Any] | None = None
    #: Handed back unstarted (shutdown): still a suspect if it was one.
    released: bool = False
    #: This claim's attempt is not counted (released, throttled, circuit open).
    uncounted: bool = False


class Worker:
    """One consumer of worker.events; several may run against one database."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        handler: EventHandler,
        settings: Settings,
        worker_id: str | None = None,
    ) -> None:
        self.pool = pool
        self.handler = handler
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._inflight: dict[int, tuple[Event, asyncio.Task[None]]] = {}
        self._completions: list[Completion] = []
        #: Ledger records waiting for the flusher, each with its event's id.
        self._records: list[EventRecord] = []
        self._flush_needed = asyncio.Event()
        self._closing = False
        #: Handler runs at once; claimed events beyond it wait their turn in this process.
        self._running = asyncio.Semaphore(settings.worker_concurrency)
        #: Claimed-but-unhandled events at most: the running ones plus BATCHES_AHEAD batches
        #: ready to go, so the next batch's claim overlaps the current batches' work. A handled
        #: event waiting for the flusher holds no slot (its write overlaps the next claim);
        #: but no more than twice this many are held in all, whatever the flusher's pace.
        self._max_claimed = settings.worker_concurrency + BATCHES_AHEAD * settings.claim_batch_size
        self._unhandled = 0
        #: Login codes being handled (beside the WORKER_CONCURRENCY slots), and when the claim
        #: loop last looked for them while it had no room for a batch.
        self._urgent_running = 0
        self._last_urgent_probe = float("-inf")
        self._urgent_probe_due = False
        #: Free room worth a claim while events are in flight (idle: any room is).
        self._refill_at = max(1, min(settings.claim_batch_size, self._max_claimed // 2))
        self._flushing: set[int] = set()  # ids being written right now (neither buffered nor done)
        #: Events a ledger row of which the database refused, with the reason: they end `failed`.
        self._ledger_refused: dict[int, str] = {}
        self._liveness: psycopg.AsyncConnection | None = None
        #: The group of suspects (events freed from a crashed worker) running alone, if any, and
        #: whether more may be waiting.
        self._solo: frozenset[int] = frozenset()
        self._suspect_waiting = False
        #: Since when (monotonic) our heartbeats have gone through without a gap; None while not.
        self._heard_since: float | None = None
        self._last_heard: float | None = None
        self._claims_paused = False
        #: What fails right now ("claims", "outcome writes") and the error's type, for /healthz:
        #: set where the failure is caught, cleared by the next success.
        self.failing: dict[str, str] = {}
        self._log = log.bind(worker_id=self.worker_id)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Claim and handle events until `stop()` is called, then shut down gracefully."""
        await self._heartbeat_once(log_errors=True)
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat")
        flusher = asyncio.create_task(self._flush_loop(), name="worker-flush")
        sweeper = asyncio.create_task(self._callback_sweep_loop(), name="worker-callback-sweep")
        self._log.info("worker.started", concurrency=self.settings.worker_concurrency)
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            sweeper.cancel()
            # The flusher is not cancelled mid-write: it is told to finish what is buffered. The
            # heartbeat goes on meanwhile, or others would take our claims for a dead worker's.
            self._closing = True
            self._flush_needed.set()
            await asyncio.gather(flusher, sweeper, return_exceptions=True)
            if not self._records and not self._completions:  # else: released as a stopped worker's
                with contextlib.suppress(psycopg.Error):
                    async with self.pool.connection() as conn:
                        await conn.execute(QUERIES["unregister_worker"], {"worker_id": self.worker_id})
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await self._close_liveness()
            self._log.info("worker.stopped")

    def stop(self) -> None:
        """Stop claiming and sending: requests under way finish, and so do their events
        (bounded by SHUTDOWN_GRACE_SECONDS); messages not yet started are left for later."""
        self._stopping.set()
        self.handler.stop_sending()
        self.wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # ------------------------------------------------------------------ claiming
    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.poll_interval_seconds)
            self.wake.clear()
            while not self._stopping.is_set():
                if not self._heard_recently():
                    break  # a successful heartbeat wakes us
                if not self._solo.isdisjoint(self._inflight):
                    # Suspects run alone, but for login codes: someone waits for those.
                    await self._claim_urgent()
                    break
                self._solo = frozenset()
                if self._suspect_waiting:
                    if self._inflight:
                        await self._claim_urgent()  # login codes do not wait for that
                        break  # let what runs finish, then the suspect goes alone
                    if await self._start_suspect():
                        continue
                free = self._max_claimed - self._unhandled
                held_room = 2 * self._max_claimed - len(self._inflight)  # handled, unwritten too
                if free <= 0 or held_room <= 0 or (self._unhandled and free < self._refill_at):
                    # Under load, wait for a good share of the slots: one claim of many
                    # events costs one round trip and one commit, like a claim of one. Login
                    # codes do not wait for them.
                    await self._claim_urgent()
                    break  # handlers finishing (or a flush) free slots and wake us
                limit = min(free, held_room, self.settings.claim_batch_size)
                try:
                    claimed = await self._claim(limit)
                    failures = 0
                except psycopg.Error as exc:
                    failures += 1
                    self._log.warning("worker.claim_failed", error=str(exc), failures=failures)
                    await self._pause(min(5.0, 0.1 * 2**failures))
                    break
                if claimed:
                    await self._start(claimed)
                if len(claimed) < limit:
                    # Nothing more was due for us: what comes later announces itself (NOTIFY), an
                    # event waiting behind one of ours is looked for when ours is written, and
                    # the poll timer catches the rest. Asking again at once would find nothing.
                    break

    def _heard_recently(self) -> bool:
        """Whether our heartbeat went through within half the stale threshold. A worker whose
        heartbeat fails while its pool still works (a lock on worker.workers, a heartbeat
        connection that cannot get through) would soon be taken for dead, its claims handed to
        others while it still sends them: it claims nothing more until a heartbeat succeeds."""
        heard = self._last_heard is not None and (
            time.monotonic() - self._last_heard <= self.settings.stale_after_seconds / 2
        )
        if not heard and not self._claims_paused:
            self._claims_paused = True
            self.failing["heartbeat"] = "claims paused"  # /healthz answers 503 meanwhile
            self._log.warning("worker.claims_paused",
                              reason="no heartbeat through yet, or none for half the stale threshold")
        return heard

    async def _start_suspect(self) -> bool:
        """Claim a group of events freed from a crashed worker and run it alone (nothing else in
        flight): if it takes this worker down too, the crash is the group's, which is then
        halved (sql/008); its neighbours lose nothing. Groups run back to back."""
        self._suspect_waiting = False
        try:
            group = await self._claim(self._max_claimed, suspects=True)
        except psycopg.Error as exc:
            self._log.warning("worker.claim_failed", error=str(exc))
            return False
        if not group:
            return False
        self._solo = frozenset(event.id for event in group)
        self._suspect_waiting = True  # more may follow this group
        self._log.warning(
            "event.suspects_alone", count=len(group), first_event_id=group[0].id, kinds=sorted(
                {event.kind for event in group})
        )
        await self._start(group)
        return True

    async def _claim_urgent(self) -> None:
        """Claim login codes while the claim loop holds no room for a batch (its slots taken by
        bulk events waiting for a provider's quota) or runs suspects alone (should the worker die
        now, they go back as plain events, not suspects: sql/008). They start at once, beside the
        running handlers (`_handle`), at most WORKER_CONCURRENCY of them; one probe every
        URGENT_PROBE_SECONDS at most, however often the loop is woken."""
        room = self.settings.worker_concurrency - self._urgent_running
        wait = self._last_urgent_probe + URGENT_PROBE_SECONDS - time.monotonic()
        if room <= 0:
            return
        if wait > 0:  # probed a moment ago: look again once the interval is over (one timer)
            if not self._urgent_probe_due:
                self._urgent_probe_due = True
                asyncio.get_running_loop().call_later(wait, self._urgent_probe_time)
            return
        self._last_urgent_probe = time.monotonic()
        try:
            urgent = await self._claim(room, urgent=True)
        except psycopg.Error as exc:
            self._log.warning("worker.claim_failed", error=str(exc))
            return
        if urgent:
            await self._start(urgent)

    def _urgent_probe_time(self) -> None:
        self._urgent_probe_due = False
        self.wake.set()

    async def _claim(self, limit: int, suspects: bool = False, urgent: bool = False) -> list[Event]:
        params = {"limit": limit, "worker_id": self.worker_id, "suspects": suspects, "urgent": urgent}
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(QUERIES["claim_batch"], params)
                rows = await cur.fetchall()
        except psycopg.Error as exc:
            self.failing["claims"] = type(exc).__name__  # for /healthz, until a claim succeeds
            raise
        self.failing.pop("claims", None)
        events = [Event(*row) for row in rows]
        for kind, count in Counter(event.kind for event in events).items():
            METRICS.events_claimed.labels(kind=kind).inc(count)
        if events:
            self._log.debug("event.claimed_batch", count=len(events))
        return events

    async def _start(self, events: list[Event]) -> None:
        try:
            context = await self.handler.prepare(events)
        except Exception as exc:  # the batch's data could not be loaded: retry them all later
            self._log.warning("worker.prepare_failed", error=str(exc), count=len(events))
            for event in events:
                self._complete(event, Outcome(error=TransientDeliveryError(f"prepare: {exc}")))
            return
        for event in events:
            task = asyncio.create_task(self._handle(event, context), name=f"event-{event.id}")
            self._inflight[event.id] = (event, task)
            self._unhandled += 1

    async def _handle(self, event: Event, context: Any) -> None:
        # A login code does not queue for a handler slot behind bulk events (they may all be
        # waiting for an email quota): up to WORKER_CONCURRENCY of them run beside the slots.
        urgent = (
            event.kind in self.handler.urgent_kinds
            and self._urgent_running < self.settings.worker_concurrency
        )
        self._urgent_running += urgent
        try:
            async with contextlib.nullcontext() if urgent else self._running:
                if self._stopping.is_set():  # claimed but never started: give it back untouched
                    self._complete(event, Outcome(), status="released")
                    return
                if event.expires_at is not None and event.expires_at <= datetime.now(UTC):
                    # Looked at once it has its slot, not when claimed: it may have waited behind
                    # slow sends or a quota since (up to BATCHES_AHEAD batches of them).
                    self._complete(event, Outcome(), status="expired")
                    return
                try:
                    record = functools.partial(self._record, event.id)
                    outcome = await self.handler.handle(event, context, record)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a handler bug must not kill the daemon; retry it later
                    log.exception("event.handler_crashed", event_id=event.id, kind=event.kind)
                    outcome = Outcome(error=TransientDeliveryError(f"{type(exc).__name__}: {exc}"))
            self._complete(event, outcome)
        finally:
            self._unhandled -= 1
            self._urgent_running -= urgent
            if self._max_claimed - self._unhandled == self._refill_at:
                self.wake.set()  # room for a claim worth its round trip

    # ------------------------------------------------------------------ outcomes
    def _record(self, event_id: int, record: DeliveryRecord) -> None:
        """A message's record, queued for the very next flush (not held until its event ends)."""
        self._records.append((event_id, record))
        self._flush_needed.set()

    def _complete(self, event: Event, outcome: Outcome, status: str | None = None) -> None:
        """Turn a handler's outcome into the event's next state, then queue it for the flusher."""
        ids = {"event_id": event.id, "kind": event.kind, "subject_id": event.subject_id}
        error = outcome.error
        if status == "released":
            completion = Completion(event, "pending", released=True, uncounted=True)
            self._log.info("event.returned_to_queue", **ids)
        elif status == "expired":
            completion = Completion(event, "expired", error="expired before delivery")
            self._log.info("event.expired", **ids)
        elif error is None:
            completion = Completion(event, "done")
            self._log.info("event.done", **ids, deliveries=outcome.deliveries)
        elif isinstance(error, TransientDeliveryError) and (retry := self._retry(event, error)):
            completion = retry
            self._log.warning(
                "event.retry", **ids, attempt=event.attempts, delay_s=round(retry.delay, 3),
                counted=not retry.uncounted, error=str(error),
            )
        else:
            reason = str(error)
            if isinstance(error, TransientDeliveryError):
                reason = f"gave up at its deadline, after {event.attempts} attempts: {reason}"
            completion = Completion(event, "failed", error=reason)
            self._log.error("event.failed", **ids, attempt=event.attempts, error=reason)
        completion.payload = outcome.payload
        self._completions.append(completion)
        self._flush_needed.set()

    def _retry(self, event: Event, error: TransientDeliveryError) -> Completion | None:
        """The event's next try, or None when it would come after the event's deadline.

        Retries are bounded by time, not by a count: a provider down for an hour costs time,
        not messages. A throttle (429, our own quota) or an open circuit says nothing about the
        message: no attempt is counted and the wait is what the provider asked (or the time to
        the circuit's next probe), without growing the backoff.
        """
        if error.throttled:
            delay = error.retry_after if error.retry_after is not None else self.settings.retry_base_seconds
        else:
            delay = retry_delay(
                event.attempts,
                base=self.settings.retry_base_seconds,
                cap=self.settings.retry_max_seconds,
                retry_after=error.retry_after,
            )
        deadline = event.retry_from + timedelta(seconds=self.settings.deadline_seconds(event.kind))
        if event.expires_at is not None:
            deadline = min(deadline, event.expires_at)
        now = datetime.now(UTC)
        if now >= deadline:
            return None
        # The last try comes at the deadline itself, not a long backoff before it.
        delay = min(delay, (deadline - now).total_seconds())
        return Completion(event, "pending", delay=delay, error=str(error), uncounted=error.throttled)

    async def _flush_loop(self) -> None:
        failures = 0
        give_up_at: float | None = None
        while True:
            await self._flush_needed.wait()
            # Let what is already runnable run first: a handler whose last message was just
            # handed over ends within these turns of the loop, so its records and its outcome go
            # in one statement instead of two (no time passes unless other work is ready).
            for _ in range(FLUSH_SETTLE_TURNS):
                await asyncio.sleep(0)
            self._flush_needed.clear()
            if await self._flush():
                failures = 0
            else:
                failures += 1
                if self._closing:
                    # A database blip at shutdown: keep trying for a few seconds (a record not
                    # written is a message that may go out twice), then leave what is left
                    # `processing` under our id, for another worker to release.
                    give_up_at = give_up_at or time.monotonic() + CLOSING_FLUSH_SECONDS
                    if time.monotonic() >= give_up_at:
                        self._log.error("worker.unwritten_at_exit", records=len(self._records),
                                        outcomes=len(self._completions))
                        return
                await asyncio.sleep(min(5.0, 0.2 * 2**failures))
                self._flush_needed.set()
            if self._closing and not self._completions:
                return

    async def _flush(self) -> bool:
        """Write buffered records and outcomes; on a connection error keep them for the next try."""
        batch, self._completions = self._completions, []
        if self._ledger_refused:
            batch = [self._refused_ledger(completion) for completion in batch]
        records, self._records = self._records, []
        if not batch and not records:
            return True
        self._flushing = {c.event.id for c in batch}
        complete = True
        try:
            await self._write(batch, records)
            self.failing.pop("outcome writes", None)
        except psycopg.Error as exc:
            self.failing["outcome writes"] = type(exc).__name__
            if not _refused_by_a_row(exc):
                # The database, not a row (a lost connection, a read-only standby after a
                # failover, a privilege): keep everything for the next try; a record dropped is
                # a message that may be sent twice.
                self._completions[:0] = batch
                self._records[:0] = records
                self._log.warning("worker.flush_failed", error=error_first_line(exc), count=len(batch),
                                  records=len(records))
                return False
            # One row the database refuses must not hold up the others for ever.
            self._log.error("worker.flush_rejected", error=error_first_line(exc), count=len(batch),
                            records=len(records))
            unwritten, unwritten_records = await self._write_one_by_one(batch, records)
            # /healthz keeps saying so until a write goes through whole: refused rows may be all
            # of them (a constraint the worker's rows break), each event then failed one by one.
            complete = not unwritten and not unwritten_records
            if not complete:  # the database went away meanwhile: the rest goes with the next flush
                self._completions[:0] = unwritten
                self._records[:0] = unwritten_records
                kept = {completion.event.id for completion in unwritten}
                batch = [completion for completion in batch if completion.event.id not in kept]
        finally:
            self._flushing = set()
        for completion in batch:
            self._inflight.pop(completion.event.id, None)
        self.wake.set()
        return complete

    async def _write_one_by_one(
        self, batch: list[Completion], records: list[EventRecord]
    ) -> tuple[list[Completion], list[EventRecord]]:
        """Write each event's records and outcome on their own, so that a row the database
        refuses costs only itself. Returns what was left unwritten because the database itself
        failed meanwhile (not a row's fault): from then on nothing more is tried, everything left
        waits for the next flush (trying each event in turn against a database that is gone
        would wait for a connection once per event)."""
        outcomes = {completion.event.id: completion for completion in batch}
        by_event: dict[int, list[EventRecord]] = {}
        for item in records:
            by_event.setdefault(item[0], []).append(item)
        order = list(dict.fromkeys([*by_event, *outcomes]))
        for position, event_id in enumerate(order):
            completion, rows = await self._write_event_alone(
                outcomes.get(event_id), by_event.get(event_id, [])
            )
            if completion is not None or rows:
                later = order[position + 1 :]
                left = [completion] if completion is not None else []
                left += [outcomes[i] for i in later if i in outcomes]
                return left, rows + [item for i in later for item in by_event.get(i, [])]
        return [], []

    async def _write_event_alone(
        self, completion: Completion | None, rows: list[EventRecord]
    ) -> tuple[Completion | None, list[EventRecord]]:
        """One event's records and outcome; on a refusal, each record alone. A record still
        refused is dropped with its log line (`delivery.unrecordable`) and the event ends
        `failed` with the reason (`_refused_ledger`); its other rows are kept, so a retry by an
        operator does not send those messages again. An outcome still refused is written as
        `failed`. Returns what is left unwritten when the database fails meanwhile."""
        try:
            await self._write([completion] if completion is not None else [], rows)
            return None, []
        except psycopg.Error as exc:
            if not _refused_by_a_row(exc):
                return completion, rows
        for position, (event_id, record) in enumerate(rows):
            try:
                await self._write([], [(event_id, record)])
            except psycopg.Error as exc:
                if not _refused_by_a_row(exc):
                    return completion, rows[position:]
                error = f"ledger row not recordable: {error_first_line(exc)}"
                self._ledger_refused[event_id] = error
                self._log.error("delivery.unrecordable", event_id=event_id, channel=record.channel,
                                recipient_masked=masked_recipient(record.recipient),
                                status=record.status, error=error)
        if completion is None:  # its outcome comes later, failed by `_refused_ledger`
            return None, []
        completion = self._refused_ledger(completion)
        try:
            await self._write([completion], [])
            return None, []
        except psycopg.Error as exc:
            if not _refused_by_a_row(exc):
                return completion, []
            error = f"outcome not recordable: {error_first_line(exc)}"
        refused = Completion(completion.event, "failed", error=error)
        try:
            await self._write([refused], [])
        except psycopg.Error as exc:
            if not _refused_by_a_row(exc):
                return refused, []
            # Refused even as `failed` (a constraint on worker.events itself): left `processing`
            # under our id until another worker releases it after this one stops; logged.
            self._log.error("event.unrecordable", event_id=refused.event.id, error=error_first_line(exc))
            return None, []
        self._log.error("event.failed", event_id=refused.event.id, kind=refused.event.kind, error=error)
        return None, []

    def _refused_ledger(self, completion: Completion) -> Completion:
        """`completion`, or `failed` when the database refused one of its event's ledger rows: a
        message the ledger does not show as sent, which a retry or a release would send again,
        and which an operator should see. (An outcome already `failed` gets the reason added.)"""
        error = self._ledger_refused.pop(completion.event.id, None)
        if error is None:
            return completion
        if completion.status == "failed":
            error = f"{completion.error}; {error}"
        else:
            self._log.error("event.failed", event_id=completion.event.id, kind=completion.event.kind,
                            error=error)
        return Completion(completion.event, "failed", error=error, payload=completion.payload)

    async def _write(self, batch: list[Completion], records: list[EventRecord]) -> None:
        params = _completion_params(batch, records, self.worker_id)
        async with self.pool.connection() as conn:
            await conn.execute(QUERIES["complete_events"], params)
        _count_written(batch)

    async def _callback_sweep_loop(self) -> None:
        """Apply provider status callbacks that arrived while their ledger row was being written
        (the writing statement could not see them). Off the heartbeat's connection: it touches
        the ledger, whose locks must never delay a heartbeat."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(QUERIES["apply_waiting_callbacks"])
            except psycopg.Error as exc:
                self._log.debug("worker.callback_sweep_failed", error=str(exc))

    # ------------------------------------------------------------------ shutdown
    async def _drain(self) -> None:
        """Let in-flight events finish within the grace period; release the rest unhandled."""
        tasks = [task for _, task in self._inflight.values()]
        if tasks:
            self._log.info("worker.draining", inflight=len(tasks))
            _, unfinished = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_seconds)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        finished = {c.event.id for c in self._completions} | self._flushing
        leftover = [event for eid, (event, _) in self._inflight.items() if eid not in finished]
        if leftover:
            # Back to pending like unstarted claims; the closing flush writes them.
            self._log.warning("worker.released_unfinished", count=len(leftover))
            for event in leftover:
                self._complete(event, Outcome(), status="released")

    # ------------------------------------------------------------------ liveness
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            await self._heartbeat_once(log_errors=True)

    async def _heartbeat_once(self, log_errors: bool) -> None:
        """Refresh our heartbeat, free dead workers' claims and expire stale pending events."""
        params = {"worker_id": self.worker_id, "hostname": socket.gethostname(), "pid": os.getpid()}
        stale = {"stale_seconds": self.settings.stale_after_seconds}
        release = {**stale, "max_crashes": self.settings.max_crashes}
        released: list[tuple[Any, ...]] = []
        try:
            # A heartbeat that hangs (a partition, a pooler queueing during an outage) is a failed
            # one: it must not complete late and judge others as if it had heard all along.
            async with asyncio.timeout(self.settings.stale_after_seconds / 2):
                conn = await self._liveness_connection()
                await conn.execute(QUERIES["heartbeat"], params)  # committed first, on its own
                now = time.monotonic()
                gap = now - (self._last_heard or now)
                if self._heard_since is None or gap > self.settings.stale_after_seconds / 2:
                    self._heard_since = now  # heard again after a silence: start counting anew
                self._last_heard = now
                if self._claims_paused:
                    self._claims_paused = False
                    self.failing.pop("heartbeat", None)
                    self._log.info("worker.claims_resumed")
                    self.wake.set()
                # Only a worker that has heard the database for a whole stale period may call
                # another silent: after an outage everyone saw, the others need as long to return.
                if now - self._heard_since >= self.settings.stale_after_seconds:
                    released = await (
                        await conn.execute(QUERIES["release_dead_claims"], release)
                    ).fetchall()
                expired = await (await conn.execute(QUERIES["expire_pending"])).fetchall()
                await conn.execute(QUERIES["forget_dead_workers"], stale)
                waiting = await (await conn.execute(QUERIES["suspects_waiting"])).fetchone()
        except (psycopg.Error, TimeoutError) as exc:
            if log_errors:
                self._log.warning("worker.heartbeat_failed", error=str(exc) or type(exc).__name__)
            self._heard_since = None
            await self._close_liveness()
            return
        for event_id, kind, dead_worker, status, crashed, group in released:
            if status == "failed":
                self._log.error("event.failed", event_id=event_id, kind=kind, dead_worker=dead_worker,
                                error=f"its worker stopped {self.settings.max_crashes} times while it ran"
                                " alone")
                METRICS.events_failed.labels(kind=kind).inc()
            else:
                self._log.warning("event.released", event_id=event_id, kind=kind, dead_worker=dead_worker,
                                  crashed=crashed, suspect_group=group)
        for event_id, kind in expired:
            self._log.info("event.expired", event_id=event_id, kind=kind)
            METRICS.events_expired.labels(kind=kind).inc()
        if waiting and waiting[0]:
            self._suspect_waiting = True
        if released or self._suspect_waiting:
            self.wake.set()

    async def _liveness_connection(self) -> psycopg.AsyncConnection:
        """The heartbeat's own connection: a pool busy with jobs, cron runs or a burst of
        deliveries must never delay it past STALE_AFTER_SECONDS (others would take our claims)."""
        if self._liveness is None or self._liveness.closed:
            self._liveness = await psycopg.AsyncConnection.connect(self.pool.conninfo, **self.pool.kwargs)
        return self._liveness

    async def _close_liveness(self) -> None:
        if self._liveness is not None:
            with contextlib.suppress(psycopg.Error):
                await self._liveness.close()
            self._liveness = None

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


#: The series a written outcome adds to, by its status (`pending`: a retry; a release counts none).
_OUTCOME_SERIES = {
    "done": METRICS.events_done,
    "pending": METRICS.events_retried,
    "failed": METRICS.events_failed,
    "expired": METRICS.events_expired,
}


def _count_written(batch: list[Completion]) -> None:
    """Count outcomes once the statement writing them went through, not when the handler ends:
    an outcome the flusher turns into `failed` (a ledger row or the outcome itself refused)
    counts once, as failed. (An outcome for an event no longer ours, released meanwhile by
    another worker that took this one for dead, is counted though the statement skipped it.)"""
    tally = Counter((c.status, c.event.kind) for c in batch if not c.released)
    for (status, kind), count in tally.items():
        _OUTCOME_SERIES[status].labels(kind=kind).inc(count)


def _refused_by_a_row(exc: psycopg.Error) -> bool:
    """Whether the database refused a value of the batch (a CHECK, a bad value, a duplicate), which
    writing the rows one by one isolates, rather than refusing the write as such."""
    return isinstance(exc, psycopg.errors.DataError | psycopg.errors.IntegrityError) or (
        exc.sqlstate == "21000"  # cardinality_violation: two rows of the batch for one ledger row
    )


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL, which a provider's error body may contain."""
    return value.replace("\x00", "") if value else value


def _completion_params(
    batch: list[Completion], rows: list[EventRecord], worker_id: str
) -> dict[str, Any]:
    """Column arrays for `complete_events` (outcomes and ledger rows, bound with unnest)."""
    return {
        "ids": [c.event.id for c in batch],
        "statuses": [c.status for c in batch],
        "delays": [c.delay for c in batch],
        "errors": [_text(c.error) for c in batch],
        "payloads": [Jsonb(c.payload) if c.payload is not None else None for c in batch],
        "released": [c.released for c in batch],
        "uncounted": [c.uncounted for c in batch],
        "worker_id": worker_id,
        "d_event_ids": [eid for eid, _ in rows],
        "d_channels": [d.channel for _, d in rows],
        "d_recipients": [d.recipient for _, d in rows],
        "d_roles": [d.recipient_role for _, d in rows],
        "d_templates": [d.template for _, d in rows],
        "d_statuses": [d.status for _, d in rows],
        "d_message_ids": [d.provider_message_id for _, d in rows],
        "d_error_codes": [d.error_code for _, d in rows],
        "d_error_messages": [_text(d.error_message) for _, d in rows],
    }
