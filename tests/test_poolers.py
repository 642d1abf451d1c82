"""Through a real PgBouncer, as users deploy behind Supabase's poolers: transaction mode (port
6543) for the work, with LISTEN on a session connection of its own; session mode for everything.

The pools have two server connections per database (tests/pgbouncer.py), so the worker's ten
or so connections take turns on them: anything that needs a session breaks at once here.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from core.db import create_pool
from scheduler.runs import run_job_now
from testkit.fake_providers import FakeProviders, worker_env
from tests.appdata import add_bookings, status_counts
from tests.pgbouncer import MISSING, PGBOUNCER, PgBouncer, pgbouncer, unreachable_reason
from tests.processes import REPO
from tests.waiting import wait_until
from tests.worker_settings import fast_settings

pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason=MISSING)

#: What the worker sends for one new booking: admin, client and performer WhatsApp, client email.
MESSAGES_PER_BOOKING = 4


@pytest.fixture(scope="module")
def transaction_pooler(pg_admin: str) -> Iterator[PgBouncer]:
    if reason := unreachable_reason(pg_admin):
        pytest.skip(reason)
    with pgbouncer(pg_admin, "transaction") as bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def session_pooler(pg_admin: str) -> Iterator[PgBouncer]:
    if reason := unreachable_reason(pg_admin):
        pytest.skip(reason)
    with pgbouncer(pg_admin, "session") as bouncer:
        yield bouncer


def check_cli(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "listener", "check"],
        cwd=REPO, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60,
    )


def test_twenty_bookings_through_a_transaction_pooler_every_message_once_every_event_done(
    db: psycopg.Connection, db_url: str, transaction_pooler: PgBouncer, spawn_worker
) -> None:
    """The work pool behind the transaction pooler, LISTEN on the direct connection: nothing
    prepared server-side collides, every event ends `done`, every message goes out once and has
    its ledger row. (Before: prepared statements collided on the shared server connections and
    events failed after their messages had gone out, with no ledger rows.)"""
    with FakeProviders() as fake:
        worker = spawn_worker(
            transaction_pooler.url(db_url),
            LISTEN_DATABASE_URL=db_url,
            RESEND_RATE_PER_SECOND="1000",
            WORKER_CONCURRENCY="10",
            CLAIM_BATCH_SIZE="5",
            **worker_env(fake.url),
        )
        worker.wait_for_log("listener.connected")
        add_bookings(db, 20)
        wait_until(lambda: status_counts(db).get("done", 0) == 20, timeout=60, message="20 events done")
        sent = db.execute(
            "SELECT provider_message_id FROM worker.deliveries WHERE status = 'sent'"
        ).fetchall()
        answered = [r.response.get("sid") or r.response.get("id") for r in fake.requests if r.status < 300]
        assert worker.terminate() == 0
    assert status_counts(db) == {"done": 20}
    assert len(fake.requests) == 20 * MESSAGES_PER_BOOKING
    recipients = Counter((r.provider, str(r.body.get("To") or r.body.get("to")), r.body.get("Body") or
                          r.body.get("subject")) for r in fake.requests)
    assert max(recipients.values()) == 1, "a message went out twice"
    assert sorted(row[0] for row in sent) == sorted(answered), "every message sent has its ledger row"
    assert not worker.events_logged("worker.flush_rejected")
    assert not worker.events_logged("worker.claim_failed")


def test_run_and_check_refuse_a_transaction_pooler_without_a_session_connection(
    db_url: str, transaction_pooler: PgBouncer, spawn_worker
) -> None:
    """LISTEN through a transaction pooler hears nothing: `run` refuses to start (exit 1) rather
    than run half-working, with the very line `check` prints."""
    pooled = transaction_pooler.url(db_url)
    worker = spawn_worker(pooled)
    assert worker.proc.wait(60) == 1
    [refusal] = worker.events_logged("daemon.cannot_start")
    assert refusal["error"].startswith("LISTEN/NOTIFY does not work through DATABASE_URL")
    assert "LISTEN_DATABASE_URL" in refusal["error"]
    checked = check_cli(DATABASE_URL=pooled)
    assert checked.returncode == 1
    assert f"problem: {refusal['error']}" in checked.stdout.splitlines()


def test_check_through_a_transaction_pooler_with_a_session_connection_is_ok(
    db_url: str, transaction_pooler: PgBouncer
) -> None:
    checked = check_cli(DATABASE_URL=transaction_pooler.url(db_url), LISTEN_DATABASE_URL=db_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1].startswith("ok:")


def test_a_transaction_pooler_as_the_session_connection_is_named(
    db_url: str, transaction_pooler: PgBouncer
) -> None:
    pooled = transaction_pooler.url(db_url)
    checked = check_cli(DATABASE_URL=db_url, LISTEN_DATABASE_URL=pooled)
    assert checked.returncode == 1
    assert "problem: LISTEN/NOTIFY does not work through LISTEN_DATABASE_URL: LISTEN_DATABASE_URL must be" \
        " a session connection" in checked.stdout


def test_a_session_pooler_serves_everything(
    db: psycopg.Connection, db_url: str, session_pooler: PgBouncer, spawn_worker
) -> None:
    pooled = session_pooler.url(db_url)
    checked = check_cli(DATABASE_URL=pooled)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    worker = spawn_worker(pooled, POLL_INTERVAL_SECONDS="30")  # heard through LISTEN, not polled
    worker.wait_for_log("listener.connected")
    add_bookings(db, 5)
    wait_until(lambda: status_counts(db).get("done", 0) == 5, timeout=20, message="5 events done")
    assert worker.terminate() == 0


async def test_job_runs_through_a_transaction_pooler_are_serialised_and_leave_no_lock_behind(
    db: psycopg.Connection, db_url: str, transaction_pooler: PgBouncer
) -> None:
    """The job lock lives in a transaction, which the pooler keeps on one server connection: three
    runs at once go one after the other, and no advisory lock outlives them (a session lock's
    unlock would land on another server connection, leaving the lock held by the pooler's)."""
    pool = create_pool(transaction_pooler.url(db_url), 6)
    await pool.open()
    try:
        summaries = await asyncio.gather(
            *(run_job_now(pool, fast_settings(db_url), "cleanup") for _ in range(3))
        )
    finally:
        await pool.close()
    assert [summary["success"] for summary in summaries] == [True, True, True]
    runs = db.execute(
        "SELECT started_at, finished_at FROM worker.job_runs WHERE job = 'cleanup' ORDER BY started_at"
    ).fetchall()
    assert len(runs) == 3
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(runs)), runs
    held = db.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE l.locktype = 'advisory' AND d.datname = current_database()"
    ).fetchone()
    assert held == (0,)


def test_migrate_needs_a_session_connection_too(empty_db_url: str, transaction_pooler: PgBouncer) -> None:
    """migrate's advisory lock is a session lock: through a transaction pooler its unlock could
    land on another server connection and leave the lock held, so the next migrate would wait
    for ever. Without a session connection it refuses; with one, it migrates."""
    pooled = transaction_pooler.url(empty_db_url)
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": pooled}
    command = [sys.executable, "-m", "listener", "migrate"]
    refused = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.startswith("migrate refused: LISTEN/NOTIFY does not work through DATABASE_URL")
    done = subprocess.run(command, cwd=REPO, env={**env, "LISTEN_DATABASE_URL": empty_db_url},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("migrations applied: 001_worker_schema.sql")

