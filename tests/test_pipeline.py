"""The claim loop in-process against a real database: ordering, retries, failures, expiry.

The handler here is a scripted implementation of the handler interface (the pipeline's
contract), not a stand-in for any of our functions: it lets each test choose an outcome.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from click.testing import CliRunner

from core.db import create_pool
from core.metrics import METRICS
from handlers.contract import (
    DeliveryRecord,
    Event,
    Outcome,
    PermanentDeliveryError,
    RecordDelivery,
    TransientDeliveryError,
)
from listener import admin
from listener.cli import main as cli
from listener.stream import EventStream
from listener.worker import Worker
from tests.appdata import (
    add_booking,
    add_bookings,
    add_client,
    add_login_code,
    add_performer,
    events,
    status_counts,
)
from tests.waiting import async_wait_until
from tests.worker_settings import fast_settings

#: What a scripted handler does with one event: its outcome, or the records it reports first
#: and then its outcome.
Script = Callable[[Event], "Outcome | tuple[list[DeliveryRecord], Outcome]"]


class ScriptedHandler:
    urgent_kinds = frozenset({"otp.created"})

    def __init__(
        self,
        script: Script | None = None,
        delay: float = 0.0,
        jitter: float = 0.0,
        delays: dict[str, float] | None = None,
    ) -> None:
        self.script = script or (lambda event: Outcome())
        self.delay = delay
        self.delays = delays or {}  # per kind, instead of `delay`
        self.jitter = jitter
        self.handled: list[Event] = []
        self.running = 0
        self.max_running = 0
        self.per_subject: dict[str | None, list[int]] = defaultdict(list)
        self.open_subjects: set[str | None] = set()
        self.overlaps: list[int] = []  # events started while another of their subject was running
        #: The other subjects that ran at some moment while each subject's last event ran.
        self.company: dict[str | None, set[str | None]] = {}
        self.running_subjects: set[str | None] = set()

    async def prepare(self, events: Sequence[Event]) -> None:
        return None

    def stop_sending(self) -> None:
        return None

    async def handle(self, event: Event, context: Any, record: RecordDelivery) -> Outcome:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        # Alone: nothing else running when it started, and nothing started while it ran.
        for other in self.running_subjects:
            self.company[other].add(event.subject_id)
        self.company[event.subject_id] = set(self.running_subjects)
        self.running_subjects.add(event.subject_id)
        if event.subject_id in self.open_subjects:
            self.overlaps.append(event.id)
        self.open_subjects.add(event.subject_id)
        try:
            await asyncio.sleep(self.delays.get(event.kind, self.delay) + random.uniform(0, self.jitter))
            self.handled.append(event)
            self.per_subject[event.subject_id].append(event.id)
            result = self.script(event)
            if isinstance(result, Outcome):
                return result
            records, outcome = result
            for delivery in records:
                record(delivery)
            return outcome
        finally:
            self.open_subjects.discard(event.subject_id)
            self.running_subjects.discard(event.subject_id)
            self.running -= 1


class Running:
    """A worker with its LISTEN stream, running in this loop until the block ends."""

    def __init__(self, db_url: str, handler: Any, **overrides: Any) -> None:
        self.settings = fast_settings(db_url, **overrides)
        self.pool = create_pool(db_url, 4)
        self.worker = Worker(self.pool, handler, self.settings)
        self.stream = EventStream(db_url, self.worker.wake, ping_seconds=1)

    async def __aenter__(self) -> Running:
        await self.pool.open()
        self.tasks = [asyncio.create_task(self.stream.run()), asyncio.create_task(self.worker.run())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.worker.stop()
        await asyncio.wait_for(self.tasks[1], 30)
        self.tasks[0].cancel()
        await asyncio.gather(self.tasks[0], return_exceptions=True)
        await self.pool.close()


async def wait_all_finished(db: psycopg.Connection, total: int, timeout: float = 30) -> dict[str, int]:
    async def finished() -> dict[str, int] | None:
        c = status_counts(db)
        done = c.get("done", 0) + c.get("failed", 0) + c.get("expired", 0)
        return c if done == total else None

    return await async_wait_until(finished, timeout=timeout, message=f"{total} events finished")


async def test_backlog_present_at_startup_is_processed(db: psycopg.Connection, db_url: str) -> None:
    add_bookings(db, 300)
    handler = ScriptedHandler()
    async with Running(db_url, handler):
        final = await wait_all_finished(db, 300)
    assert final == {"done": 300}
    assert sorted(e.id for e in handler.handled) == [e["id"] for e in events(db)]


async def test_events_written_while_running_are_woken_by_notify(db: psycopg.Connection, db_url: str) -> None:
    handler = ScriptedHandler()
    # A long poll interval: only NOTIFY can make this fast.
    async with Running(db_url, handler, poll_interval_seconds=30) as running:
        await async_wait_until(_connected(running.stream), timeout=5, message="LISTEN connection up")
        add_bookings(db, 5)
        await wait_all_finished(db, 5, timeout=5)


def _connected(stream: EventStream) -> Callable[[], Any]:
    async def check() -> bool:
        return stream.connected

    return check


async def test_per_subject_order_is_kept_with_concurrency(db: psycopg.Connection, db_url: str) -> None:
    client, performer = add_client(db), add_performer(db)
    bookings = [add_booking(db, client, performer) for _ in range(6)]
    for status in ("approved", "deposit_uploaded", "deposit_verified", "accepted", "completed"):
        for booking in bookings:
            db.execute("UPDATE bookings SET status = %s WHERE id = %s", (status, booking))
    # Random handling times: without the ordering guard, later events would overtake earlier ones.
    handler = ScriptedHandler(jitter=0.03)
    async with Running(db_url, handler, worker_concurrency=16):
        await wait_all_finished(db, 36)
    assert handler.max_running > 1
    assert handler.overlaps == []
    for booking in bookings:
        assert handler.per_subject[booking] == sorted(handler.per_subject[booking])
        kinds = [e.kind for e in handler.handled if e.subject_id == booking]
        assert kinds == ["booking.created", "booking.approved", "booking.deposit_uploaded",
                         "booking.deposit_verified", "booking.accepted", "booking.completed"]


async def test_an_event_behind_its_subjects_older_one_starts_when_that_one_is_written(
    db: psycopg.Connection, db_url: str
) -> None:
    """A booking's later events wait while its first is handled; they start as soon as it is
    written (the flush wakes the claim loop), not at the next poll (30 s here)."""
    client, performer = add_client(db), add_performer(db)
    handler = ScriptedHandler(delay=0.2)
    async with Running(db_url, handler, poll_interval_seconds=30) as running:
        await async_wait_until(_connected(running.stream), timeout=5, message="LISTEN connection up")
        booking = add_booking(db, client, performer)
        for status in ("approved", "accepted"):
            db.execute("UPDATE bookings SET status = %s WHERE id = %s", (status, booking))
        started = time.monotonic()
        await wait_all_finished(db, 3, timeout=10)
    # Three handlings of 0.2 s one after the other, each started within a flush of the last.
    assert time.monotonic() - started < 3.0
    assert [e.kind for e in handler.handled] == ["booking.created", "booking.approved", "booking.accepted"]


async def test_transient_failure_is_retried_then_succeeds(db: psycopg.Connection, db_url: str) -> None:
    def script(event: Event) -> Outcome:
        if event.attempts < 3:
            failed = DeliveryRecord("email", "ann@example.com", "failed", error_code="500")
            return [failed], Outcome(error=TransientDeliveryError("provider 500"))
        sent = DeliveryRecord("email", "ann@example.com", "sent", provider_message_id="m1")
        return [sent], Outcome()

    add_bookings(db, 1)
    handler = ScriptedHandler(script)
    async with Running(db_url, handler):
        await wait_all_finished(db, 1)
    [event] = events(db)
    assert event["status"] == "done" and event["attempts"] == 3
    ledger = db.execute("SELECT status, attempts, provider_message_id FROM worker.deliveries").fetchall()
    assert ledger == [("sent", 3, "m1")]


async def test_permanent_failure_is_recorded(db: psycopg.Connection, db_url: str) -> None:
    add_bookings(db, 1)
    handler = ScriptedHandler(lambda e: Outcome(error=PermanentDeliveryError("invalid number", code="21211")))
    async with Running(db_url, handler):
        await wait_all_finished(db, 1)
    [event] = events(db)
    assert event["status"] == "failed"
    assert event["attempts"] == 1
    assert "invalid number" in event["last_error"]


async def test_retries_end_at_the_kinds_deadline_not_after_a_count(
    db: psycopg.Connection, db_url: str
) -> None:
    """Transient failures retry until the event's deadline (its kind's, else the default), then
    fail with the reason; an event of another kind keeps its own, longer deadline."""
    add_bookings(db, 1)
    handler = ScriptedHandler(lambda e: Outcome(error=TransientDeliveryError("still down")))
    deadlines = {"booking.created": 3.0}
    started = time.monotonic()
    async with Running(db_url, handler, event_deadlines=deadlines, retry_max_seconds=0.1):
        await wait_all_finished(db, 1)
    [event] = events(db)
    assert event["status"] == "failed"
    assert "gave up at its deadline" in event["last_error"] and "still down" in event["last_error"]
    assert event["attempts"] > 10  # the old budget (MAX_ATTEMPTS 10) would have ended it sooner
    assert 1.0 < time.monotonic() - started < 10


async def test_a_throttle_counts_no_attempt(db: psycopg.Connection, db_url: str) -> None:
    """429s (and an open circuit) say nothing about the message: retried after Retry-After,
    attempts not counted, so an hour of throttling cannot use up an event's chances."""
    def script(event: Event) -> Outcome:
        if len(handler.handled) < 6:
            return Outcome(error=TransientDeliveryError("429", retry_after=0.05, throttled=True))
        return Outcome()

    add_bookings(db, 1)
    handler = ScriptedHandler(script)
    async with Running(db_url, handler):
        await wait_all_finished(db, 1)
    [event] = events(db)
    assert (event["status"], event["attempts"]) == ("done", 1)
    assert len(handler.handled) == 6


async def test_handler_crash_does_not_kill_the_worker(db: psycopg.Connection, db_url: str) -> None:
    def script(event: Event) -> Outcome:
        if event.attempts == 1:
            raise ZeroDivisionError("bug")
        return Outcome()

    add_bookings(db, 3)
    async with Running(db_url, ScriptedHandler(script)):
        final = await wait_all_finished(db, 3)
    assert final == {"done": 3}


async def test_expired_event_is_not_handled(db: psycopg.Connection, db_url: str) -> None:
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, expires_at) VALUES "
        "('booking.reminder_due', 'b1', now() - interval '1 minute'), ('booking.reminder_due', 'b2', NULL)"
    )
    handler = ScriptedHandler()
    async with Running(db_url, handler):
        await wait_all_finished(db, 2)
    assert status_counts(db) == {"expired": 1, "done": 1}
    assert [e.subject_id for e in handler.handled] == ["b2"]


async def test_an_event_expiring_while_it_waits_for_a_slot_is_not_handled(
    db: psycopg.Connection, db_url: str
) -> None:
    """Expiry is looked at when an event gets its handler slot, not only when it is claimed: an
    event claimed ahead may wait behind slow sends for longer than it is worth sending."""
    handler = ScriptedHandler(delays={"booking.created": 1.5})
    async with Running(db_url, handler, worker_concurrency=1):
        with db.transaction():  # one claim takes both: the slow one runs, the other waits
            db.execute(
                "INSERT INTO worker.events (kind, subject_id, expires_at) VALUES "
                "('booking.created', 'b1', NULL), ('booking.reminder_due', 'b2', now() + interval '1 second')"
            )
        await wait_all_finished(db, 2)
    rows = db.execute(
        "SELECT subject_id, status, locked_at < expires_at FROM worker.events ORDER BY id"
    ).fetchall()
    assert rows == [("b1", "done", None), ("b2", "expired", True)]  # b2 claimed while still due
    assert [e.subject_id for e in handler.handled] == ["b1"]


async def test_two_workers_handle_each_event_exactly_once(db: psycopg.Connection, db_url: str) -> None:
    add_bookings(db, 400)
    first, second = ScriptedHandler(delay=0.001), ScriptedHandler(delay=0.001)
    # Batches of 50: each worker holds at most 8 + 2 * 50 unhandled claims (fast_settings' 8
    # handlers), so neither takes all 400 at once.
    async with Running(db_url, first, claim_batch_size=50), Running(db_url, second, claim_batch_size=50):
        await wait_all_finished(db, 400)
    ids = [e.id for e in first.handled] + [e.id for e in second.handled]
    assert len(ids) == len(set(ids)) == 400
    assert first.handled and second.handled


async def test_stop_releases_unfinished_work(db: psycopg.Connection, db_url: str) -> None:
    add_bookings(db, 20)
    handler = ScriptedHandler(delay=30)  # longer than the grace period
    async with Running(db_url, handler, worker_concurrency=5, shutdown_grace_seconds=0.5):
        await async_wait_until(lambda: _running(handler), timeout=10)
    assert status_counts(db) == {"pending": 20}
    assert {e["attempts"] for e in events(db)} == {0}


def _outcome_counts(kind: str) -> dict[str, float]:
    """This process's `flavor_events_done` and `_failed` counts for `kind`."""
    return {
        series: METRICS.registry.get_sample_value(f"flavor_events_{series}_total", {"kind": kind}) or 0.0
        for series in ("done", "failed")
    }


async def _running(handler: ScriptedHandler) -> bool:
    return handler.running > 0


async def test_a_dead_workers_claims_run_in_halved_groups_alone_and_only_a_solo_offender_fails(
    db: psycopg.Connection, db_url: str
) -> None:
    """Events freed from a worker that died are suspects: they run in groups half the size of what
    it held, each group with nothing else in flight, their attempt not counted; an event that
    was alone when its worker died for the MAX_CRASHES-th time fails; ordinary events flow."""
    # Both workers last beat after the server started (so they crashed; a restart is no crash).
    db.execute(
        "INSERT INTO worker.workers (id, hostname, pid, heartbeat_at) SELECT w, 'h', 1,"
        " pg_postmaster_start_time() + interval '1 ms' FROM unnest(ARRAY['dead-a', 'dead-b']) w"
    )
    suspects = [f"s{i}" for i in range(4)]
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, status, attempts, locked_by, locked_at)"
        " SELECT 'booking.created', s, 'processing', 1, 'dead-a', now() FROM unnest(%s::text[]) s",
        (suspects,),
    )
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, status, attempts, solo_crashes, locked_by, locked_at)"
        " VALUES ('booking.created', 'poison', 'processing', 1, 2, 'dead-b', now())"
    )
    add_bookings(db, 30)
    handler = ScriptedHandler(delay=0.05)
    async with Running(db_url, handler, max_crashes=3, worker_concurrency=8):
        await wait_all_finished(db, 35)
    by_subject = {e["subject_id"]: e for e in events(db)}
    assert by_subject["poison"]["status"] == "failed"
    assert "stopped 3 times while it was handled alone" in by_subject["poison"]["last_error"]
    for suspect in suspects:
        assert by_subject[suspect]["status"] == "done"
        assert by_subject[suspect]["attempts"] == 1  # the crash did not use up an attempt
        # dead-a held 4: groups of 2, each with nothing else in flight.
        assert handler.company[suspect] <= set(suspects) and len(handler.company[suspect]) == 1
    assert handler.max_running > 1  # ordinary events still ran concurrently
    assert "poison" not in handler.per_subject
    crashes = {subject: rest for subject, *rest in db.execute(
        "SELECT subject_id, crashes, solo_crashes, suspect_group FROM worker.events"
        " WHERE subject_id = 'poison' OR subject_id LIKE 's_'"
    )}
    assert crashes == {"poison": [1, 3, 1], **{s: [1, 0, None] for s in suspects}}


def test_manual_retry_forgets_failed_deliveries_and_keeps_sent_ones(
    db: psycopg.Connection, db_url: str
) -> None:
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, status, attempts, last_error, finished_at) VALUES "
        "('booking.created', 'b1', 'failed', 1, 'invalid number', now()),"
        "('booking.created', 'b2', 'done', 1, NULL, now())"
    )
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, status, expires_at, finished_at) VALUES "
        "('booking.reminder_due', 'b3', 'expired', now() - interval '1 hour', now())"
    )
    db.execute(
        "INSERT INTO worker.deliveries (event_id, channel, recipient, status) VALUES "
        "(1, 'whatsapp', '+61400000002', 'failed'), (1, 'email', 'ann@example.com', 'sent')"
    )
    assert admin.retry_events(db_url, None) == [1]
    assert admin.retry_events(db_url, 2) == [2]
    assert admin.retry_events(db_url, 2) == []  # already pending
    assert admin.retry_events(db_url, 3) == [3]
    assert status_counts(db) == {"pending": 3}
    assert db.execute("SELECT expires_at FROM worker.events WHERE id = 3").fetchone() == (None,)
    ledger = db.execute("SELECT event_id, channel, status FROM worker.deliveries ORDER BY id").fetchall()
    assert ledger == [(1, "email", "sent")]


async def test_stop_finishes_running_events_and_returns_unstarted_claims(
    db: psycopg.Connection, db_url: str
) -> None:
    add_bookings(db, 30)
    handler = ScriptedHandler(delay=0.3)
    async with Running(db_url, handler, worker_concurrency=1, claim_batch_size=10) as running:
        await async_wait_until(lambda: handler.running > 0 and running.worker.inflight >= 20, timeout=10)
        claimed = running.worker.inflight
    assert claimed == 20  # two batches ahead: one event running, nineteen waiting their turn
    counts = status_counts(db)
    assert counts == {"done": len(handler.handled), "pending": 30 - len(handler.handled)}
    assert 1 <= len(handler.handled) <= 2
    assert {e["attempts"] for e in events(db) if e["status"] == "pending"} == {0}


async def test_handled_events_waiting_to_be_written_free_their_slot_up_to_a_cap(
    db: psycopg.Connection, db_url: str
) -> None:
    """While outcomes cannot be written, handled events no longer hold claim slots (the next
    claim overlaps the write), but a worker never holds more than twice its slots."""
    add_bookings(db, 30)
    handler = ScriptedHandler()
    slots = 1 + 2 * 4  # WORKER_CONCURRENCY + BATCHES_AHEAD * CLAIM_BATCH_SIZE
    with psycopg.connect(db_url) as blocker:
        # Held by another transaction, the ledger table makes every flush wait.
        blocker.execute("LOCK TABLE worker.deliveries IN EXCLUSIVE MODE")
        async with Running(db_url, handler, worker_concurrency=1, claim_batch_size=4) as running:

            async def capped_and_idle() -> bool:
                return len(handler.handled) >= 2 * slots and handler.running == 0

            await async_wait_until(capped_and_idle, timeout=10, message="twice the slots handled")
            assert running.worker.inflight == 2 * slots
            assert status_counts(db) == {"processing": 2 * slots, "pending": 30 - 2 * slots}
            blocker.rollback()
            await wait_all_finished(db, 30)
    assert len(handler.handled) == 30


async def test_an_outcome_the_database_refuses_fails_alone(db: psycopg.Connection, db_url: str) -> None:
    """A ledger row violating a constraint must not freeze the worker's other outcomes."""
    add_bookings(db, 6)
    bad = events(db)[2]["id"]

    def script(event: Event) -> Outcome:
        channel = "fax" if event.id == bad else "email"  # "fax" breaks the ledger's CHECK
        return [DeliveryRecord(channel, f"r{event.id}@example.com", "sent")], Outcome()  # type: ignore[arg-type]

    before = _outcome_counts("booking.created")
    async with Running(db_url, ScriptedHandler(script)):
        await wait_all_finished(db, 6)
        add_bookings(db, 2)  # and the worker keeps going afterwards
        await wait_all_finished(db, 8)
    by_id = {e["id"]: e for e in events(db)}
    assert by_id[bad]["status"] == "failed"
    assert "ledger row not recordable" in by_id[bad]["last_error"]
    assert status_counts(db) == {"done": 7, "failed": 1}
    # The metrics say what was written: the refused event counts as failed, not also as done.
    after = _outcome_counts("booking.created")
    assert {series: after[series] - before[series] for series in after} == {"done": 7, "failed": 1}
    assert db.execute("SELECT count(*) FROM worker.deliveries").fetchone() == (7,)


class GatheredSends(ScriptedHandler):
    """Sends an event's three messages concurrently, as the router does (each record handed over
    from a task of its own), then returns its outcome."""

    async def handle(self, event: Event, context: Any, record: RecordDelivery) -> Outcome:
        async def send(n: int) -> None:
            record(DeliveryRecord("email", f"r{n}-{event.id}@example.com", "sent"))

        await asyncio.gather(*(send(n) for n in range(3)))
        self.handled.append(event)
        return Outcome()


async def test_an_events_records_and_outcome_are_written_in_one_statement(
    db: psycopg.Connection, db_url: str
) -> None:
    """At low load, the records of messages sent concurrently and their event's outcome reach the
    flusher a couple of loop turns apart: they still go in one statement (same `now()`), not two."""
    handler = GatheredSends()
    async with Running(db_url, handler, poll_interval_seconds=30) as running:
        await async_wait_until(_connected(running.stream), timeout=5, message="LISTEN connection up")
        for _ in range(5):
            add_bookings(db, 1)
            await asyncio.sleep(0.1)  # one at a time
        await wait_all_finished(db, 5)
    written = db.execute(
        "SELECT count(*), count(*) FILTER (WHERE d.sent_at = e.finished_at)"
        " FROM worker.deliveries d JOIN worker.events e ON e.id = d.event_id"
    ).fetchone()
    assert written == (15, 15)


class RecordsFirst(ScriptedHandler):
    """Hands its records over at once and its outcome `later` seconds after, so the records are
    written on their own before the outcome, as a slow sibling message would make them."""

    def __init__(self, script: Script, later: float) -> None:
        super().__init__(script)
        self.later = later

    async def handle(self, event: Event, context: Any, record: RecordDelivery) -> Outcome:
        result = self.script(event)
        assert not isinstance(result, Outcome)
        records, outcome = result
        for delivery in records:
            record(delivery)
        await asyncio.sleep(self.later)
        self.handled.append(event)
        return outcome


async def test_a_ledger_row_the_database_refuses_costs_only_that_row(
    db: psycopg.Connection, db_url: str
) -> None:
    """Three messages of one event, one of which the ledger refuses (its CHECK): the two others
    keep their rows (an operator's retry does not send them again), and the event ends failed with
    the reason, whether its rows were handed over with its outcome or half a second before it."""
    add_bookings(db, 2)

    def script(event: Event) -> tuple[list[DeliveryRecord], Outcome]:
        return [
            DeliveryRecord("email", f"r{event.id}@example.com", "sent"),
            DeliveryRecord("fax", f"r{event.id}", "sent"),  # type: ignore[arg-type]
            DeliveryRecord("whatsapp", f"+6140000000{event.id}", "sent"),
        ], Outcome()

    for handler in (ScriptedHandler(script), RecordsFirst(script, later=0.5)):
        async with Running(db_url, handler):
            await wait_all_finished(db, len(events(db)))
        add_bookings(db, 2)
    ledger = db.execute(
        "SELECT event_id, channel FROM worker.deliveries ORDER BY event_id, channel"
    ).fetchall()
    assert ledger == [(n, channel) for n in (1, 2, 3, 4) for channel in ("email", "whatsapp")]
    finished = [e for e in events(db) if e["status"] != "pending"]
    assert [e["status"] for e in finished] == ["failed"] * 4
    assert all("ledger row not recordable" in e["last_error"] for e in finished)


async def test_an_event_with_a_refused_ledger_row_is_not_retried_into_sending_it_again(
    db: psycopg.Connection, db_url: str
) -> None:
    """One of its messages went out but its row was refused, and another failed for a while: a
    retry would send the first again (the ledger does not show it), so the event ends failed
    instead, for an operator to look at."""
    add_bookings(db, 1)

    def script(event: Event) -> tuple[list[DeliveryRecord], Outcome]:
        refused = DeliveryRecord("fax", "sent-but-refused", "sent")  # type: ignore[arg-type]
        return [refused], Outcome(error=TransientDeliveryError("whatsapp: 503"))

    handler = ScriptedHandler(script)
    async with Running(db_url, handler):
        await wait_all_finished(db, 1)
    [event] = events(db)
    assert (event["status"], event["attempts"]) == ("failed", 1)
    assert event["last_error"].startswith("ledger row not recordable")
    assert len(handler.handled) == 1


async def test_an_outcome_refused_even_as_failed_does_not_hold_up_the_flusher(
    db: psycopg.Connection, db_url: str
) -> None:
    """A constraint on worker.events that refuses one event's every outcome: that event is logged
    and left (`event.unrecordable`), the others are written at once, nothing stays in flight."""
    db.execute(
        "ALTER TABLE worker.events ADD CONSTRAINT stuck CHECK"
        " (subject_id <> 'stuck' OR status IN ('pending', 'processing')) NOT VALID"
    )
    db.execute("INSERT INTO worker.events (kind, subject_id) VALUES ('booking.created', 'stuck')")
    async with Running(db_url, ScriptedHandler()) as running:
        await async_wait_until(lambda: len(running.worker.failing) or None, timeout=10, message="refused")
        add_bookings(db, 3)
        await async_wait_until(
            lambda: status_counts(db).get("done") == 3 or None, timeout=3, message="the others written"
        )
        await async_wait_until(lambda: running.worker.inflight == 0 or None, timeout=2, message="none held")
    assert status_counts(db) == {"done": 3, "processing": 1}


async def test_the_database_failing_while_rows_are_written_one_by_one_repeats_and_loses_nothing(
    db: psycopg.Connection, db_url: str
) -> None:
    """A refused row sends the event's rows one by one; the database then fails on the next one
    (not a row's fault): what was written stays written once, the rest waits for the database."""
    db.execute(
        "CREATE FUNCTION public.trouble() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.recipient = 'later@example.com' THEN RAISE EXCEPTION 'database trouble'; END IF;"
        " RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER trouble BEFORE INSERT ON worker.deliveries"
        " FOR EACH ROW EXECUTE FUNCTION public.trouble()"
    )
    add_bookings(db, 1)

    def script(event: Event) -> tuple[list[DeliveryRecord], Outcome]:
        return [
            DeliveryRecord("email", "first@example.com", "sent"),
            DeliveryRecord("fax", "refused", "sent"),  # type: ignore[arg-type]
            DeliveryRecord("email", "later@example.com", "sent"),
        ], Outcome()

    async with Running(db_url, ScriptedHandler(script)):
        await async_wait_until(
            lambda: db.execute("SELECT count(*) FROM worker.deliveries").fetchone() == (1,) or None,
            timeout=10, message="the first row written",
        )
        await asyncio.sleep(0.5)  # the rest tried again meanwhile, in vain
        assert status_counts(db) == {"processing": 1}
        db.execute("DROP TRIGGER trouble ON worker.deliveries")
        await wait_all_finished(db, 1)
    ledger = db.execute("SELECT recipient, attempts FROM worker.deliveries ORDER BY id").fetchall()
    assert ledger == [("first@example.com", 1), ("later@example.com", 1)]
    [event] = events(db)
    assert (event["status"], event["last_error"].split(":")[0]) == ("failed", "ledger row not recordable")


async def test_heartbeat_keeps_beating_while_the_work_pool_is_exhausted(
    db: psycopg.Connection, db_url: str
) -> None:
    """Jobs or a burst of deliveries holding every pooled connection must not stop the heartbeat."""
    def last_beat() -> Any:
        row = db.execute("SELECT heartbeat_at FROM worker.workers").fetchone()
        return row[0] if row else None

    async def registered() -> bool:
        return last_beat() is not None

    async with Running(db_url, ScriptedHandler()) as running:
        await async_wait_until(registered, timeout=10, message="the worker registered")
        held = [await running.pool.getconn() for _ in range(running.pool.max_size)]
        try:
            before = last_beat()

            async def beat_advanced() -> bool:
                return last_beat() > before

            await async_wait_until(beat_advanced, timeout=5, message="a heartbeat with the pool exhausted")
        finally:
            for conn in held:
                await running.pool.putconn(conn)


def test_events_show_tells_the_next_try_the_deadline_and_the_crash_record(
    db: psycopg.Connection, db_url: str
) -> None:
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, run_at, created_at, crashes, suspect_group) VALUES"
        " ('booking.created', 'b1', '2026-01-01T10:05:00Z', '2026-01-01T10:00:00Z', 1, 2),"
        " ('booking.reminder_due', 'b2', now(), '2026-01-01T10:00:00Z', 0, NULL)"
    )
    db.execute("UPDATE worker.events SET expires_at = '2026-01-01T11:00:00Z' WHERE subject_id = 'b2'")
    env = {"DATABASE_URL": db_url, "EVENT_DEADLINES": '{"booking.created": 7200}'}
    shown = [
        json.loads(CliRunner().invoke(cli, ["events", "show", str(n)], env=env).output) for n in (1, 2)
    ]
    created, reminder = shown
    assert created["run_at"].startswith("2026-01-01T10:05:00")  # its next try
    assert created["deadline"].startswith("2026-01-01T12:00:00")  # its kind's deadline: 2 h
    assert (created["crashes"], created["solo_crashes"], created["suspect_group"]) == (1, 0, 2)
    assert reminder["deadline"].startswith("2026-01-01T11:00:00")  # its own expiry comes first


async def test_a_ledger_the_database_will_not_write_for_a_while_keeps_every_record(
    db: psycopg.Connection, db_url: str
) -> None:
    """A refusal that is the database's, not a row's (here a read-only standby's SQLSTATE, as
    after a failover), keeps records and outcomes for the next flush: nothing is dropped (a
    dropped record is a message sent twice) and nothing is failed."""
    db.execute(
        "CREATE FUNCTION read_only_for_test() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'read-only' USING ERRCODE = '25006'; END $$"
    )
    db.execute(
        "CREATE TRIGGER read_only BEFORE INSERT ON worker.deliveries FOR EACH ROW"
        " EXECUTE FUNCTION read_only_for_test()"
    )
    add_bookings(db, 3)

    def script(event: Event) -> tuple[list[DeliveryRecord], Outcome]:
        sent = DeliveryRecord("email", f"r{event.id}@example.com", "sent", provider_message_id="m")
        return [sent], Outcome()

    handler = ScriptedHandler(script)
    async with Running(db_url, handler) as running:
        await async_wait_until(lambda: "outcome writes" in running.worker.failing, timeout=10,
                               message="the flush refused")
        assert status_counts(db) == {"processing": 3}
        db.execute("DROP TRIGGER read_only ON worker.deliveries")
        await wait_all_finished(db, 3)
    assert status_counts(db) == {"done": 3}
    assert db.execute("SELECT count(*) FROM worker.deliveries").fetchone() == (3,)
    assert len(handler.handled) == 3  # nothing handled (sent) twice


async def test_an_operator_retry_gives_an_event_a_whole_deadline_again(
    db: psycopg.Connection, db_url: str
) -> None:
    """An event failed at its deadline (say after a long outage), requeued by an operator: its
    deadline counts from the requeue, so a transient error retries it instead of failing it."""
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, status, attempts, last_error, created_at,"
        " finished_at) VALUES ('booking.created', 'b1', 'failed', 30, 'gave up at its deadline',"
        " now() - interval '2 days', now())"
    )
    tries: list[int] = []

    def script(event: Event) -> Outcome:
        tries.append(event.attempts)
        return Outcome(error=TransientDeliveryError("still flaky")) if len(tries) == 1 else Outcome()

    assert admin.retry_events(db_url, None) == [1]
    async with Running(db_url, ScriptedHandler(script)):
        await wait_all_finished(db, 1)
    assert status_counts(db) == {"done": 1}
    assert tries == [1, 2]


async def test_login_codes_are_claimed_before_an_older_backlog(db: psycopg.Connection, db_url: str) -> None:
    """Someone waits at a login screen: a login code written after 40 bookings is in the first
    claimed batch, not behind the backlog (sql/008)."""
    add_bookings(db, 40)
    add_login_code(db, "waiting@example.com")
    handler = ScriptedHandler(delay=0.01)
    async with Running(db_url, handler, worker_concurrency=1, claim_batch_size=4):
        await wait_all_finished(db, 41)
    kinds = [event.kind for event in handler.handled]
    assert "otp.created" in kinds[:5]


def _dead_worker_held(db: psycopg.Connection, subjects: list[str]) -> None:
    """`subjects`' events claimed by a worker that then died (its last beat after the server
    started: a crash, not a restart)."""
    db.execute(
        "INSERT INTO worker.workers (id, hostname, pid, heartbeat_at)"
        " VALUES ('dead', 'h', 1, pg_postmaster_start_time() + interval '1 ms')"
    )
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, status, attempts, locked_by, locked_at)"
        " SELECT 'booking.created', s, 'processing', 1, 'dead', now() FROM unnest(%s::text[]) s",
        (subjects,),
    )


#: A worker that judges others quickly: a dead worker's claims come back about a second in.
QUICK_RELEASE = {"stale_after_seconds": 2, "heartbeat_seconds": 0.3}


async def test_a_login_code_does_not_wait_for_suspects_running_alone(
    db: psycopg.Connection, db_url: str
) -> None:
    """Suspects run alone, one group after the other (here two groups of one, 3 s each): a
    login code written meanwhile runs beside them, not after them."""
    _dead_worker_held(db, ["s0", "s1"])
    handler = ScriptedHandler(delays={"booking.created": 3.0})
    async with Running(db_url, handler, **QUICK_RELEASE):
        await async_wait_until(
            lambda: _running_one_of(handler, "s0", "s1"), timeout=10, message="a suspect running"
        )
        add_login_code(db, "waiting@example.com")
        written = time.monotonic()
        await async_wait_until(lambda: _handled(handler, "otp.created"), timeout=10, message="code sent")
        waited = time.monotonic() - written
        await wait_all_finished(db, 3, timeout=20)
    [otp] = [e for e in handler.handled if e.kind == "otp.created"]
    assert handler.company[otp.subject_id] & {"s0", "s1"}, "it ran beside a suspect"
    assert waited < 1.5, f"the login code waited {waited:.2f} s"


async def test_a_login_code_does_not_wait_while_a_worker_lets_its_work_finish_for_suspects(
    db: psycopg.Connection, db_url: str
) -> None:
    """A worker with suspects waiting lets what it runs finish before they go alone, claiming
    nothing meanwhile: but for login codes."""
    handler = ScriptedHandler(delays={"booking.created": 5.0})
    async with Running(db_url, handler, **QUICK_RELEASE) as running:
        add_bookings(db, 2)  # running for 5 s
        await async_wait_until(lambda: handler.running == 2 or None, timeout=5, message="bookings running")
        _dead_worker_held(db, ["s0"])
        await async_wait_until(
            lambda: running.worker._suspect_waiting or None, timeout=5, message="a suspect waiting"
        )
        add_login_code(db, "waiting@example.com")
        written = time.monotonic()
        await async_wait_until(lambda: _handled(handler, "otp.created"), timeout=10, message="code sent")
        waited = time.monotonic() - written
        assert handler.running == 2, "the bookings were still running"
        await wait_all_finished(db, 4, timeout=20)
    assert waited < 1.5, f"the login code waited {waited:.2f} s"
    assert handler.company["s0"] == set(), "the suspect still ran alone"


async def test_login_codes_beside_the_slots_are_bounded_by_worker_concurrency(
    db: psycopg.Connection, db_url: str
) -> None:
    """Login codes start beside the WORKER_CONCURRENCY handler slots, at most that many of them:
    ten slow ones with a concurrency of 2 run 4 at a time (2 in the slots, 2 beside)."""
    for n in range(10):
        add_login_code(db, f"user{n}@example.com")
    handler = ScriptedHandler(delay=0.3)
    async with Running(db_url, handler, worker_concurrency=2, claim_batch_size=10):
        await wait_all_finished(db, 10)
    assert handler.max_running == 4


def _running_one_of(handler: ScriptedHandler, *subjects: str) -> bool | None:
    return bool(handler.running_subjects & set(subjects)) or None


def _handled(handler: ScriptedHandler, kind: str) -> bool | None:
    return any(event.kind == kind for event in handler.handled) or None


async def test_a_worker_whose_heartbeat_fails_claims_nothing_until_it_beats_again(
    db: psycopg.Connection, db_url: str
) -> None:
    """Its pool still works but its heartbeat cannot get through (here: worker.workers locked):
    soon others would take it for dead and hand its claims on while it still sent them, so it
    claims nothing from half the stale threshold on, and resumes at its next heartbeat."""
    handler = ScriptedHandler()
    async with Running(db_url, handler) as running:
        settings = running.settings
        await async_wait_until(lambda: db.execute("SELECT 1 FROM worker.workers").fetchone(),
                               timeout=10, message="the worker registered")
        with psycopg.connect(db_url) as locker:
            locker.execute("LOCK TABLE worker.workers IN ACCESS EXCLUSIVE MODE")
            # Its last heartbeat is now more than half the stale threshold old.
            await asyncio.sleep(settings.stale_after_seconds / 2 + settings.heartbeat_seconds + 0.5)
            add_bookings(db, 5)
            await asyncio.sleep(1.0)  # five poll intervals and a NOTIFY
            assert status_counts(db) == {"pending": 5}
            assert running.worker.failing == {"heartbeat": "claims paused"}  # /healthz: 503
            locker.rollback()
        await wait_all_finished(db, 5, timeout=15)
        assert running.worker.failing == {}
    assert len(handler.handled) == 5


async def test_the_last_try_comes_at_the_deadline_not_a_backoff_past_it(
    db: psycopg.Connection, db_url: str
) -> None:
    """A backoff longer than what is left of the deadline is cut to the deadline: the message
    gets its last chance then, and the event fails right after, not a whole backoff later."""
    add_bookings(db, 1)
    handler = ScriptedHandler(lambda e: Outcome(error=TransientDeliveryError("still down")))
    started = time.monotonic()
    async with Running(db_url, handler, event_deadlines={"booking.created": 1.5},
                       retry_base_seconds=30, retry_max_seconds=60):
        await wait_all_finished(db, 1)
    [event] = events(db)
    assert event["status"] == "failed" and "gave up at its deadline" in event["last_error"]
    assert len(handler.handled) >= 2  # the first try, and the last one at the deadline
    assert time.monotonic() - started < 10
