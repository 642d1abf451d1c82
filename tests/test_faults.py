"""Fault tests against the real daemon process: kill -9, killed backends, server restart, SIGTERM."""

from __future__ import annotations

import time

import httpx
import psycopg

from core.db import LISTENER_APPLICATION_NAME
from testkit.fake_providers import FakeProviders, worker_env
from tests.appdata import add_bookings, status_counts
from tests.pgharness import PrivateServer
from tests.processes import free_port
from tests.waiting import wait_until


def all_done(conn: psycopg.Connection, total: int):
    def check() -> bool:
        return status_counts(conn).get("done", 0) == total

    return check


def test_kill_9_mid_backlog_then_new_worker_finishes_everything(
    db: psycopg.Connection, db_url: str, spawn_worker
) -> None:
    add_bookings(db, 2000)
    first = spawn_worker(db_url, WORKER_CONCURRENCY="20", CLAIM_BATCH_SIZE="20")
    wait_until(lambda: status_counts(db).get("processing", 0) > 0, timeout=30, interval=0.005,
               message="first worker holding claims")
    first.kill()
    killed_at = time.monotonic()
    held = status_counts(db).get("processing", 0)
    assert held > 0, "killed while holding claims"

    second = spawn_worker(db_url)
    wait_until(lambda: second.events_logged("event.released"), timeout=15, message="dead claims freed")
    [started] = first.events_logged("worker.started")
    # The release names the worker that died (the old query read the new, null locked_by).
    assert {line["dead_worker"] for line in second.events_logged("event.released")} == {started["worker_id"]}
    # Within the stale threshold (3 s here) plus a heartbeat and start-up, far from a long lease.
    assert time.monotonic() - killed_at < 15
    wait_until(all_done(db, 2000), timeout=60, message="all 2000 events done")
    assert status_counts(db) == {"done": 2000}
    assert second.terminate() == 0


def test_killed_listen_backend_reconnects_and_catches_up(
    db: psycopg.Connection, db_url: str, spawn_worker
) -> None:
    worker = spawn_worker(db_url, POLL_INTERVAL_SECONDS="30")
    wait_until(lambda: worker.events_logged("listener.connected"), message="listener connected")
    add_bookings(db, 1)
    wait_until(all_done(db, 1), timeout=10)

    killed = db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = %s", (LISTENER_APPLICATION_NAME,)
    ).fetchall()
    assert killed == [(True,)]
    add_bookings(db, 5)  # written while the listener is down or reconnecting
    wait_until(lambda: worker.events_logged("listener.reconnected"), timeout=20, message="reconnected")
    wait_until(all_done(db, 6), timeout=20, message="events written meanwhile processed")
    assert worker.terminate() == 0


def test_postgres_restart_under_a_running_worker(private_server: PrivateServer, spawn_worker) -> None:
    worker = spawn_worker(private_server.conninfo)
    wait_until(lambda: worker.events_logged("listener.connected"), message="listener connected")
    with psycopg.connect(private_server.conninfo, autocommit=True) as conn:
        add_bookings(conn, 10)
        wait_until(all_done(conn, 10), timeout=20)

    private_server.restart()

    with psycopg.connect(private_server.conninfo, autocommit=True) as conn:
        add_bookings(conn, 10)
        wait_until(lambda: worker.events_logged("listener.reconnected"), timeout=30, message="reconnected")
        wait_until(all_done(conn, 20), timeout=30, message="post-restart events processed")
    assert worker.proc.poll() is None
    assert worker.terminate() == 0


def test_sigterm_with_messages_in_flight_exits_zero_in_time_with_nothing_processing(
    db: psycopg.Connection, db_url: str, spawn_worker
) -> None:
    """SIGTERM while provider requests are in flight (a slow fake provider): they finish, the
    claimed-but-unstarted events go back to pending, nothing stays `processing`, exit 0."""
    with FakeProviders(latency=0.5) as fake:
        worker = spawn_worker(
            db_url,
            **worker_env(fake.url),
            RESEND_RATE_PER_SECOND="1000",
            WORKER_CONCURRENCY="5",
            CLAIM_BATCH_SIZE="20",
        )
        wait_until(lambda: worker.events_logged("worker.started"), message="worker started")
        add_bookings(db, 200)
        wait_until(lambda: len(fake.requests) > 0, timeout=20, message="requests in flight")
        started = time.monotonic()
        assert status_counts(db).get("processing", 0) > 0
        code = worker.terminate(timeout=30)
        elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 25  # inside Heroku's and Fly's 30 s
    counts = status_counts(db)
    assert counts.get("processing", 0) == 0
    assert counts.get("done", 0) > 0 and counts.get("pending", 0) > 0
    assert worker.events_logged("daemon.stopped")


def test_worker_refuses_an_unmigrated_database(empty_db_url: str, spawn_worker) -> None:
    worker = spawn_worker(empty_db_url)
    assert worker.proc.wait(30) == 1
    [line] = worker.events_logged("daemon.cannot_start")
    assert "flavor-worker migrate" in line["error"]


def test_health_is_503_while_claims_or_outcome_writes_fail_and_200_once_they_work(
    db: psycopg.Connection, db_url: str, spawn_worker
) -> None:
    """The queue read of /healthz can succeed while the claim loop's own statements fail (behind a
    pooler that refuses them, or a schema changed under the worker): the probe must say so."""
    port = free_port()
    worker = spawn_worker(db_url, PORT=str(port), POLL_INTERVAL_SECONDS="0.2", CRON_SECRET="x" * 40)
    worker.wait_for_log("worker.started")

    def health(status: int):
        def probe() -> dict | None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            except httpx.TransportError:
                return None
            return response.json() if response.status_code == status else None

        return probe

    wait_until(health(200), message="healthy at start")
    db.execute(
        "ALTER FUNCTION worker.claim_events_v3(text, integer, boolean, boolean) RENAME TO claim_events_away"
    )
    try:
        down = wait_until(health(503), timeout=15, message="unhealthy while claims fail")
    finally:
        db.execute(
            "ALTER FUNCTION worker.claim_events_away(text, integer, boolean, boolean)"
            " RENAME TO claim_events_v3"
        )
    assert "claims failing (UndefinedFunction)" in down["reason"]
    wait_until(health(200), timeout=15, message="healthy once claims work")

    db.execute("ALTER TABLE worker.events ADD CONSTRAINT not_done CHECK (status <> 'done') NOT VALID")
    try:
        add_bookings(db, 1)
        down = wait_until(health(503), timeout=15, message="unhealthy while outcomes cannot be written")
    finally:
        db.execute("ALTER TABLE worker.events DROP CONSTRAINT not_done")
    assert "outcome writes failing (CheckViolation)" in down["reason"]
    add_bookings(db, 1)
    wait_until(health(200), timeout=15, message="healthy once outcomes are written")
    assert worker.terminate() == 0
