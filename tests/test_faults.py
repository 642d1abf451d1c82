"""Fault tests against the real daemon process: kill -9, killed backends, server restart, SIGTERM."""

from __future__ import annotations

import time

import psycopg

from core.db import LISTENER_APPLICATION_NAME
from testkit.fake_providers import FakeProviders, worker_env
from tests.appdata import add_bookings, status_counts
from tests.pgharness import PrivateServer
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
