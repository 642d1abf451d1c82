"""A dyno's ordinary faults against the real daemon: what people receive, counted at the provider.

Real `flavor-worker run` processes, a real PostgreSQL, the real twilio and resend SDKs talking to
the fake providers (which record every request, and when each arrived). Each test counts the
requests the provider accepted: a message accepted twice is a message a person got twice.
Timings are shortened through settings (tests/processes.py: a worker is stale after 3 s).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import psycopg
import pytest

from testkit.fake_providers import FakeProviders, Reply, worker_env
from tests.appdata import add_booking, add_bookings, add_client, add_login_code, add_performer, status_counts
from tests.pgharness import PrivateServer
from tests.processes import FAST_ENV
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

STALE = float(FAST_ENV["STALE_AFTER_SECONDS"])


def finished(conn: psycopg.Connection, total: int) -> Callable[[], bool]:
    def check() -> bool:
        counts = status_counts(conn)
        return counts.get("done", 0) + counts.get("failed", 0) == total

    return check


def whatsapp_copies(fake: FakeProviders) -> Counter[tuple[str, str]]:
    """How many times the provider accepted each WhatsApp message (recipient, text)."""
    return Counter((r.body["To"], r.body["Body"]) for r in fake.received("twilio"))


def email_copies(fake: FakeProviders) -> Counter[str]:
    """How many times the provider accepted each email, by Idempotency-Key (one per message)."""
    return Counter(r.headers["Idempotency-Key"] for r in fake.received("resend"))


def arrival(fake: FakeProviders, recipient: str) -> float:
    """When the first email to `recipient` reached the provider (epoch seconds)."""
    [first, *_] = [r.time for r in fake.received("resend") if r.body["to"] == [recipient]]
    return first


def test_sigterm_mid_send_sends_nothing_twice(db: psycopg.Connection, db_url: str, spawn_worker) -> None:
    """A deploy: SIGTERM while WhatsApp messages have gone out and their emails still wait for
    the email quota. The next worker sends what is missing and nothing again."""
    with FakeProviders() as fake:
        env = {**worker_env(fake.url), "SHUTDOWN_GRACE_SECONDS": "1"}
        first = spawn_worker(db_url, **env, RESEND_RATE_PER_SECOND="2")
        first.wait_for_log("worker.started")
        add_bookings(db, 60)
        wait_until(lambda: len(fake.received("twilio")) >= 90, timeout=20, message="WhatsApp going out")
        assert first.terminate() == 0
        assert status_counts(db).get("pending", 0) > 0, "the deploy interrupted unfinished events"
        second = spawn_worker(db_url, **env, RESEND_RATE_PER_SECOND="1000")
        wait_until(finished(db, 60), timeout=60, message="every event finished")
        assert second.terminate() == 0
        whatsapp, emails = whatsapp_copies(fake), email_copies(fake)
    assert status_counts(db) == {"done": 60}
    assert len(whatsapp) == 180 and max(whatsapp.values()) == 1
    assert len(emails) == 60 and max(emails.values()) == 1


def test_kill_9_mid_send_repeats_only_requests_in_flight(
    db: psycopg.Connection, db_url: str, spawn_worker
) -> None:
    """`kill -9` while sending: a message is sent again only if its request was in flight at the
    kill (its acceptance could not be recorded); an email's repeat carries the same
    Idempotency-Key, so the provider drops it."""
    with FakeProviders() as fake:
        fake.set_latency(0.05, "twilio")
        env = {**worker_env(fake.url), "WORKER_CONCURRENCY": "10", "CLAIM_BATCH_SIZE": "10"}
        first = spawn_worker(db_url, **env, RESEND_RATE_PER_SECOND="2")
        first.wait_for_log("worker.started")
        add_bookings(db, 100)
        wait_until(lambda: len(fake.received("twilio")) >= 30, timeout=20, message="WhatsApp going out")
        first.kill()
        killed_at = time.time()
        spawn_worker(db_url, **env, RESEND_RATE_PER_SECOND="1000")
        wait_until(finished(db, 100), timeout=60, message="every event finished")
        accepted = fake.received("twilio")
        whatsapp, emails = whatsapp_copies(fake), email_copies(fake)
    assert status_counts(db) == {"done": 100}
    assert len(whatsapp) == 300 and len(emails) == 100
    repeated = {key for key, copies in whatsapp.items() if copies > 1}
    assert len(repeated) <= 10 * 3  # WORKER_CONCURRENCY events of 3 WhatsApp each, at most
    for key in repeated:  # the first copy was answered just before the kill: in flight
        first_copy = min(r.time for r in accepted if (r.body["To"], r.body["Body"]) == key)
        assert killed_at - first_copy < 1.0


def test_kill_9_holding_hundreds_of_claims_recovers_in_seconds_while_new_events_flow(
    db: psycopg.Connection, db_url: str, spawn_worker
) -> None:
    """The dead worker's claims (380 or more) become suspects and run in groups, not one per heartbeat:
    all done within STALE_AFTER_SECONDS + 15 s of the restart; a login code written meanwhile
    is emailed at once."""
    with FakeProviders() as fake:
        fake.set_latency(1.0, "twilio")  # a slow provider: claims pile up
        env = {**worker_env(fake.url), "RESEND_RATE_PER_SECOND": "1000", "TWILIO_RATE_PER_SECOND": "1000",
               "CLAIM_BATCH_SIZE": "350"}
        first = spawn_worker(db_url, **env)
        first.wait_for_log("worker.started")
        add_bookings(db, 600)
        wait_until(lambda: status_counts(db).get("processing", 0) >= 380, timeout=30, message="claims held")
        first.kill()
        held = status_counts(db).get("processing", 0)
        fake.set_latency(0.0, "twilio")
        restarted = time.monotonic()
        second = spawn_worker(db_url, **env)
        second.wait_for_log("worker.started")
        written = time.time()
        add_login_code(db, "first.login@example.com")
        wait_until(lambda: fake.received("resend"), timeout=10, message="the first login code")
        second.wait_for_log("event.released", timeout=STALE + 10)
        written_during = time.time()
        add_login_code(db, "second.login@example.com")
        wait_until(finished(db, 602), timeout=STALE + 15, message="every event finished")
        recovered = time.monotonic() - restarted
        first_delay = arrival(fake, "first.login@example.com") - written
        second_delay = arrival(fake, "second.login@example.com") - written_during
        groups = second.events_logged("event.suspects_alone")
    assert held >= 380
    assert recovered < STALE + 15
    assert first_delay < 2.0 and second_delay < 3.0
    assert status_counts(db) == {"done": 602}
    assert 2 <= len(groups) <= 4  # halves of what the dead worker held, run back to back


def test_an_event_that_kills_its_worker_every_time_fails_alone(
    db: psycopg.Connection, db_url: str, spawn_worker
) -> None:
    """A poison event: whenever a worker reaches it, the worker dies (here: the test kills it when
    the event's request reaches the provider, where it hangs). Halving groups corner it; it
    fails after MAX_CRASHES deaths while alone; every bystander is delivered."""
    poison = "+61400000666"
    with FakeProviders() as fake:
        fake.reject("twilio", f"whatsapp:{poison}", Reply(201, delay=120))
        client, performer = add_client(db), add_performer(db)
        with db.transaction():
            for _ in range(6):
                add_booking(db, client, performer)
            poisoned = add_booking(db, add_client(db, phone=poison), performer)
            for _ in range(6):
                add_booking(db, client, performer)
        env = {**worker_env(fake.url), "WORKER_CONCURRENCY": "4", "CLAIM_BATCH_SIZE": "4", "MAX_CRASHES": "2"}
        deaths = 0
        worker = spawn_worker(db_url, **env)

        def poison_reached_or_all_finished() -> bool:
            reached = sum(1 for _, to, _ in fake.arrivals if to == f"whatsapp:{poison}")
            return reached > deaths or finished(db, 13)()

        deadline = time.monotonic() + 150
        while not finished(db, 13)():
            wait_until(poison_reached_or_all_finished, timeout=deadline - time.monotonic(),
                       message="the poison reached again, or everything finished")
            if not finished(db, 13)():
                worker.kill()
                deaths += 1
                worker = spawn_worker(db_url, **env)
        whatsapp = whatsapp_copies(fake)
    failed = db.execute("SELECT subject_id, last_error FROM worker.events WHERE status = 'failed'").fetchall()
    assert len(failed) == 1 and "stopped 2 times while it was handled alone" in failed[0][1]
    assert status_counts(db) == {"done": 12, "failed": 1}
    # 13 events first held together: 8 -> 4 -> 2 -> 1 at most, then 2 deaths alone.
    assert deaths <= 6
    [reference] = db.execute("SELECT reference FROM bookings WHERE id = %s", (poisoned,)).fetchone()
    bystanders = {key: copies for key, copies in whatsapp.items() if reference not in key[1]}
    assert len(bystanders) == 12 * 3 and max(bystanders.values()) == 1
    # The poison booking's admin and performer messages race its hanging request to the kill:
    # each may or may not have gone out before a death, but never twice.
    own = [copies for (to, body), copies in whatsapp.items() if reference in body and poison not in to]
    assert all(copies == 1 for copies in own)


def test_a_database_restart_is_not_a_crash(private_server: PrivateServer, spawn_worker) -> None:
    """Two live workers, the server down for longer than STALE_AFTER_SECONDS: when it is back,
    neither takes the other's claims as a dead worker's, nothing becomes a suspect, and
    nothing is sent twice."""
    with FakeProviders() as fake:
        fake.set_latency(0.5, "twilio")
        env = {**worker_env(fake.url), "RESEND_RATE_PER_SECOND": "1000", "WORKER_CONCURRENCY": "10"}
        workers = [spawn_worker(private_server.conninfo, **env) for _ in range(2)]
        for worker in workers:
            worker.wait_for_log("worker.started")
        with psycopg.connect(private_server.conninfo, autocommit=True) as conn:
            add_bookings(conn, 80)
            wait_until(lambda: status_counts(conn).get("processing", 0) >= 10, message="claims held")
        private_server.stop()
        stopped = time.monotonic()
        wait_until(lambda: time.monotonic() - stopped > STALE + 1
                   and all(w.events_logged("worker.heartbeat_failed") for w in workers),
                   timeout=STALE + 15, message="an outage longer than the stale threshold")
        private_server.start()
        with psycopg.connect(private_server.conninfo, autocommit=True) as conn:
            wait_until(finished(conn, 80), timeout=60, message="every event finished")
            crashes = conn.execute(
                "SELECT count(*) FILTER (WHERE crashes > 0),"
                " count(*) FILTER (WHERE suspect_group IS NOT NULL)"
                " FROM worker.events"
            ).fetchone()
            counts = status_counts(conn)
        whatsapp = whatsapp_copies(fake)
    assert counts == {"done": 80}
    assert crashes == (0, 0)
    assert len(whatsapp) == 240 and max(whatsapp.values()) == 1
    assert all(w.proc.poll() is None for w in workers)


def test_a_provider_outage_longer_than_the_old_attempt_budget_loses_nothing(
    db: psycopg.Connection, db_url: str, spawn_worker
) -> None:
    """Twilio answers 500 for longer than ten attempts used to last: nothing fails, email flows
    throughout, and once Twilio is back everything is sent once, within seconds."""
    with FakeProviders() as fake:
        fake.outage("twilio", Reply(500))
        env = {
            **worker_env(fake.url),
            "RESEND_RATE_PER_SECOND": "1000",
            "RETRY_BASE_SECONDS": "0.2",
            "RETRY_MAX_SECONDS": "1",
            "CIRCUIT_OPEN_SECONDS": "0.5",
            "CIRCUIT_MAX_OPEN_SECONDS": "1",
        }
        worker = spawn_worker(db_url, **env)
        worker.wait_for_log("worker.started")
        add_bookings(db, 40)
        # Ten attempts at 0.2-1 s apart are over in about 6 s: the outage lasts longer.
        wait_until(lambda: len(email_copies(fake)) == 40, timeout=15, message="email unaffected")
        outage_began = time.monotonic()
        wait_until(lambda: time.monotonic() - outage_began > 8, timeout=15, message="a long outage")
        assert status_counts(db).get("failed", 0) == 0
        refused = len(fake.received("twilio", ok_only=False))
        fake.outage("twilio", None)
        back = time.monotonic()
        wait_until(finished(db, 40), timeout=20, message="every event finished")
        recovery = time.monotonic() - back
        whatsapp, emails = whatsapp_copies(fake), email_copies(fake)
        circuit = worker.events_logged("provider.circuit_open")
    assert status_counts(db) == {"done": 40}
    assert len(whatsapp) == 120 and max(whatsapp.values()) == 1
    assert len(emails) == 40 and max(emails.values()) == 1
    assert recovery < 5.0
    assert circuit, "the circuit opened"
    assert refused < 200  # the open circuit spared the provider most of the retries

