"""The scheduler: crontab ticks across Sydney DST, once per tick across workers, catch-up, locking,
the `jobs run` command, and the daemon running its jobs at start-up."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from core.crontab import crontab_day_of_week
from scheduler.runs import JOB_LOCK_CLASS, JOB_LOCK_IDS, MAX_TICK_ATTEMPTS, run_job_now, run_scheduled_tick
from scheduler.service import CATCH_UP_INTERVAL_SECONDS, JobScheduler
from scheduler.ticks import LocalCronTrigger, fire_times, previous_fire_time
from testkit.fake_providers import FakeProviders, worker_env
from tests.appdata import add_booking, add_client, add_performer, events
from tests.jobtools import NOW, fixed_clock, job_runs, job_settings, open_pool
from tests.processes import REPO
from tests.waiting import async_wait_until, wait_until

SYDNEY = ZoneInfo("Australia/Sydney")
#: The cleanup tick NOW belongs to (daily at 02:00 UTC).
CLEANUP_TICK = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
CLEANUP_LOCK = (JOB_LOCK_CLASS, JOB_LOCK_IDS["cleanup"])


def local_dates(times: list[datetime]) -> list[date]:
    return [t.astimezone(SYDNEY).date() for t in times]


def test_daily_2am_sydney_runs_once_on_the_day_clocks_go_back() -> None:
    trigger = LocalCronTrigger("0 2 * * *", SYDNEY)
    times = fire_times(trigger, datetime(2026, 4, 4, tzinfo=SYDNEY), datetime(2026, 4, 6, 23, tzinfo=SYDNEY))

    assert local_dates(times) == [date(2026, 4, 4), date(2026, 4, 5), date(2026, 4, 6)]
    # 02:00 happens twice on 5 April (AEDT, then AEST); the job runs at the first one only.
    assert times[1] == datetime(2026, 4, 4, 15, 0, tzinfo=UTC)
    assert times[2] == datetime(2026, 4, 5, 16, 0, tzinfo=UTC)


def test_daily_2am_sydney_runs_once_on_the_day_clocks_go_forward() -> None:
    trigger = LocalCronTrigger("0 2 * * *", SYDNEY)
    times = fire_times(
        trigger, datetime(2026, 10, 3, tzinfo=SYDNEY), datetime(2026, 10, 5, 23, tzinfo=SYDNEY)
    )

    assert local_dates(times) == [date(2026, 10, 3), date(2026, 10, 4), date(2026, 10, 5)]
    # 02:00 does not exist on 4 October; the tick falls at the first instant after the gap (03:00 AEDT).
    assert times[1] == datetime(2026, 10, 3, 16, 0, tzinfo=UTC)
    assert times[1].astimezone(SYDNEY).hour == 3


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 4, 5), 25), (date(2026, 10, 4), 23)])
def test_hourly_sydney_job_runs_every_real_hour_across_dst(day: date, hours: int) -> None:
    trigger = LocalCronTrigger("0 * * * *", SYDNEY)
    start = datetime(day.year, day.month, day.day, tzinfo=SYDNEY)
    end = datetime(day.year, day.month, day.day, 23, 59, tzinfo=SYDNEY)
    times = fire_times(trigger, start, end)

    assert len(times) == hours
    gaps = {b - a for a, b in itertools.pairwise(times)}
    assert gaps == {timedelta(hours=1)}


def test_previous_fire_time_is_the_tick_a_moment_belongs_to() -> None:
    daily = LocalCronTrigger("0 2 * * *", ZoneInfo("UTC"))
    assert previous_fire_time(daily, NOW) == datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
    assert previous_fire_time(daily, datetime(2026, 3, 10, 1, 59, tzinfo=UTC)) == datetime(
        2026, 3, 9, 2, tzinfo=UTC
    )
    weekly = LocalCronTrigger("30 4 * * 1", ZoneInfo("UTC"))  # crontab's 1 is Monday
    assert previous_fire_time(weekly, NOW) == datetime(2026, 3, 9, 4, 30, tzinfo=UTC)
    # After the clocks went back in Sydney, the day's tick is still the first 02:00.
    sydney = LocalCronTrigger("0 2 * * *", SYDNEY)
    assert previous_fire_time(sydney, datetime(2026, 4, 4, 17, 0, tzinfo=UTC)) == datetime(
        2026, 4, 4, 15, 0, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("1", "mon"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("*/2", "sun,tue,thu,sat"),
        ("mon-fri", "mon-fri"),
        ("*", "*"),
    ],
)
def test_crontab_day_numbers_count_from_sunday(field: str, days: str) -> None:
    assert crontab_day_of_week(field) == days


async def test_scheduler_wiring_policy_and_shutdown(db_url: str) -> None:
    settings = job_settings(db_url, scheduler_timezone="Australia/Sydney")
    async with open_pool(db_url) as pool:
        scheduler = JobScheduler(pool, settings, clock=fixed_clock())
        assert scheduler.running is False
        scheduler.start()
        try:
            assert scheduler.running is True
            jobs = scheduler.describe()
            assert set(jobs) == {"cleanup", "reminders", "catch_up"}
            assert jobs["catch_up"]["schedule"] == f"interval[{timedelta(seconds=CATCH_UP_INTERVAL_SECONDS)}]"
            for job in jobs.values():
                assert (job["misfire_grace_time"], job["coalesce"], job["max_instances"]) == (3600, True, 1)
            next_cleanup = jobs["cleanup"]["next_run_time"].astimezone(SYDNEY)
            assert (next_cleanup.hour, next_cleanup.minute) in {(2, 0), (3, 0)}
            assert jobs["reminders"]["next_run_time"].minute == 0
        finally:
            await scheduler.shutdown()
        assert scheduler.running is False


async def test_two_schedulers_on_one_database_run_a_tick_once(db: psycopg.Connection, db_url: str) -> None:
    client, performer = add_client(db), add_performer(db)
    stale = add_booking(db, client, performer, created_at=NOW - timedelta(days=2))
    settings = job_settings(db_url)
    async with open_pool(db_url) as pool_a, open_pool(db_url) as pool_b:
        a = JobScheduler(pool_a, settings, worker_id="worker-a", clock=fixed_clock())
        b = JobScheduler(pool_b, settings, worker_id="worker-b", clock=fixed_clock())
        await asyncio.gather(a.run_tick("cleanup"), b.run_tick("cleanup"), a.run_tick("cleanup"))

    [run] = job_runs(db)
    assert (run["job"], run["trigger"], run["status"]) == ("cleanup", "schedule", "succeeded")
    assert run["scheduled_for"] == datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
    assert run["worker_id"] in {"worker-a", "worker-b"}
    assert run["summary"]["summary"]["staleBookings"]["cancelled"] == 1
    assert db.execute("SELECT count(*) FROM audit_logs WHERE entity_id = %s", (stale,)).fetchone()[0] == 1


async def test_missed_ticks_are_caught_up_once_at_startup(db: psycopg.Connection, db_url: str) -> None:
    client, performer = add_client(db), add_performer(db)
    stale = add_booking(db, client, performer, created_at=NOW - timedelta(days=2))
    # Another worker ran the 09:00 reminders tick; nobody was up for today's 02:00 cleanup.
    db.execute(
        "INSERT INTO worker.job_runs (job, scheduled_for, status, worker_id)"
        " VALUES ('reminders', %s, 'succeeded', 'x')",
        (NOW,),
    )
    settings = job_settings(db_url)

    async def ran_cleanup() -> bool:
        return any(r["job"] == "cleanup" and r["status"] == "succeeded" for r in job_runs(db))

    async with open_pool(db_url) as pool:
        first = JobScheduler(pool, settings, worker_id="first", clock=fixed_clock())
        first.start()
        try:
            await async_wait_until(ran_cleanup, timeout=10, message="catch-up cleanup run")
        finally:
            await first.shutdown()
        # A worker starting later finds the tick done and runs nothing.
        second = JobScheduler(pool, settings, worker_id="second", clock=fixed_clock())
        second.start()
        await second.catch_up()
        await second.shutdown()

    runs = job_runs(db)
    assert [(r["job"], r["scheduled_for"], r["trigger"], r["worker_id"]) for r in runs] == [
        ("reminders", NOW, "schedule", "x"),
        ("cleanup", datetime(2026, 3, 10, 2, 0, tzinfo=UTC), "catch_up", "first"),
    ]
    status = db.execute("SELECT status FROM bookings WHERE id = %s", (stale,)).fetchone()[0]
    assert status == "cancelled"


def add_tick_run(
    db: psycopg.Connection, status: str, worker_id: str, *, started_ago: float = 0, attempts: int = 1
) -> None:
    """A job_runs row for today's cleanup tick, as an earlier (maybe interrupted) run left it."""
    db.execute(
        "INSERT INTO worker.job_runs (job, scheduled_for, trigger, status, worker_id, attempts, started_at)"
        " VALUES ('cleanup', %s, 'schedule', %s, %s, %s, now() - make_interval(secs => %s))",
        (CLEANUP_TICK, status, worker_id, attempts, started_ago),
    )


def add_worker(db: psycopg.Connection, worker_id: str, heartbeat_ago: float) -> None:
    db.execute(
        "INSERT INTO worker.workers (id, hostname, pid, heartbeat_at)"
        " VALUES (%s, 'dyno', 1, now() - make_interval(secs => %s))",
        (worker_id, heartbeat_ago),
    )


@pytest.mark.parametrize(
    ("status", "owner", "started_ago", "attempts", "taken_over"),
    [
        pytest.param("failed", "gone", 0, 1, True, id="failed"),
        pytest.param("running", "gone", 60, 1, True, id="running-worker-row-gone"),
        pytest.param("running", "dead", 60, 1, True, id="running-heartbeat-stale"),
        pytest.param("running", "alive", 60, 1, False, id="running-worker-alive"),
        pytest.param("running", "gone", 0, 1, False, id="running-just-claimed"),
        pytest.param("failed", "gone", 0, MAX_TICK_ATTEMPTS, False, id="failed-too-often"),
        pytest.param("succeeded", "gone", 60, 1, False, id="succeeded"),
    ],
)
async def test_an_interrupted_tick_is_taken_over(
    db: psycopg.Connection,
    db_url: str,
    status: str,
    owner: str,
    started_ago: float,
    attempts: int,
    taken_over: bool,
) -> None:
    client, performer = add_client(db), add_performer(db)
    stale = add_booking(db, client, performer, created_at=NOW - timedelta(days=2))
    add_worker(db, "dead", heartbeat_ago=60)
    add_worker(db, "alive", heartbeat_ago=0)
    add_tick_run(db, status, owner, started_ago=started_ago, attempts=attempts)
    settings = job_settings(db_url, stale_after_seconds=10)

    async with open_pool(db_url) as pool:
        result = await run_scheduled_tick(
            pool, settings, "cleanup", CLEANUP_TICK, trigger="catch_up", clock=fixed_clock(), worker_id="new"
        )

    [run] = job_runs(db)
    booking_status = db.execute("SELECT status FROM bookings WHERE id = %s", (stale,)).fetchone()[0]
    if taken_over:
        assert result is not None and result["success"] is True
        assert (run["status"], run["trigger"], run["worker_id"]) == ("succeeded", "catch_up", "new")
        assert run["summary"] == result
        assert booking_status == "cancelled"
    else:
        assert result is None
        assert (run["status"], run["worker_id"]) == (status, owner)
        assert booking_status == "pending"
    attempts_now = db.execute("SELECT attempts FROM worker.job_runs").fetchone()[0]
    assert attempts_now == attempts + taken_over


async def test_a_failed_tick_is_taken_over_by_exactly_one_of_many_workers(
    db: psycopg.Connection, db_url: str
) -> None:
    client, performer = add_client(db), add_performer(db)
    stale = add_booking(db, client, performer, created_at=NOW - timedelta(days=2))
    add_tick_run(db, "failed", "deployed-away")
    settings = job_settings(db_url)
    async with open_pool(db_url) as pool_a, open_pool(db_url) as pool_b:
        a = JobScheduler(pool_a, settings, worker_id="worker-a", clock=fixed_clock())
        b = JobScheduler(pool_b, settings, worker_id="worker-b", clock=fixed_clock())
        await asyncio.gather(a.catch_up(), b.catch_up(), a.run_tick("cleanup"), b.run_tick("cleanup"))

    cleanup = [r for r in job_runs(db) if r["job"] == "cleanup"]
    assert [(r["status"], r["worker_id"] in {"worker-a", "worker-b"}) for r in cleanup] == [
        ("succeeded", True)
    ]
    assert db.execute("SELECT attempts FROM worker.job_runs WHERE job = 'cleanup'").fetchone()[0] == 2
    assert db.execute("SELECT count(*) FROM audit_logs WHERE entity_id = %s", (stale,)).fetchone()[0] == 1


def cleanup_running(db: psycopg.Connection) -> int:
    """Cleanup runs claimed and not finished: with the lock held elsewhere, waiting for it."""
    return sum(1 for run in job_runs(db) if run["job"] == "cleanup" and run["status"] == "running")


async def test_shutdown_stops_ticks_at_once_bounds_a_running_job_and_the_tick_is_rerun(
    db: psycopg.Connection, db_url: str
) -> None:
    client, performer = add_client(db), add_performer(db)
    stale = add_booking(db, client, performer, created_at=NOW - timedelta(days=2))
    settings = job_settings(db_url)
    loop = asyncio.get_running_loop()
    async with open_pool(db_url) as pool:
        with psycopg.connect(db_url, autocommit=True) as holder:
            # Stands for a cleanup that takes long: the start-up catch-up waits for the job's lock.
            holder.execute("SELECT pg_advisory_lock(%s, %s)", CLEANUP_LOCK)
            first = JobScheduler(pool, settings, worker_id="first", clock=fixed_clock())
            first.start()

            async def stuck() -> bool:
                return cleanup_running(db) == 1

            await async_wait_until(stuck, timeout=10, message="the catch-up cleanup waiting for its lock")
            started = loop.time()
            stopping = asyncio.create_task(first.shutdown(timeout=1.0))
            # A tick firing once shutdown has begun (tasks start in creation order) must not start.
            late = asyncio.create_task(first.run_tick("reminders"))
            await asyncio.gather(stopping, late)
            elapsed = loop.time() - started
            assert first.running is False
            assert cleanup_running(db) == 0
            holder.execute("SELECT pg_advisory_unlock(%s, %s)", CLEANUP_LOCK)

        assert elapsed < 1.5
        [interrupted] = job_runs(db)
        assert (interrupted["job"], interrupted["status"], interrupted["worker_id"]) == (
            "cleanup",
            "failed",
            "first",
        )
        assert interrupted["summary"]["error"].startswith("CancelledError")
        # The next worker to start (a deploy's new dyno) runs the interrupted tick.
        second = JobScheduler(pool, settings, worker_id="second", clock=fixed_clock())
        await second.catch_up()

    runs = job_runs(db)
    assert [(r["job"], r["status"], r["trigger"], r["worker_id"]) for r in runs] == [
        ("cleanup", "succeeded", "catch_up", "second"),
        ("reminders", "succeeded", "catch_up", "second"),
    ]
    assert db.execute("SELECT status FROM bookings WHERE id = %s", (stale,)).fetchone()[0] == "cancelled"


async def test_manual_run_waits_for_the_job_lock_without_holding_a_connection(
    db: psycopg.Connection, db_url: str
) -> None:
    lock = (JOB_LOCK_CLASS, JOB_LOCK_IDS["cleanup"])
    async with open_pool(db_url, size=2) as pool:
        with psycopg.connect(db_url, autocommit=True) as holder:
            # Stands for a scheduled cleanup in progress on another worker.
            holder.execute("SELECT pg_advisory_lock(%s, %s)", lock)
            manual = asyncio.create_task(
                run_job_now(pool, job_settings(db_url), "cleanup", clock=fixed_clock())
            )
            async def retrying() -> bool:  # each try of the busy lock borrows a connection
                return pool.get_stats().get("requests_num", 0) >= 3

            await async_wait_until(retrying, timeout=10, message="manual run retrying the lock")
            assert not manual.done() and job_runs(db) == []
            # While it waits, the whole pool is free for the claim loop.
            async with pool.connection(timeout=2) as first, pool.connection(timeout=2) as second:
                await first.execute("SELECT 1")
                await second.execute("SELECT 1")
            holder.execute("SELECT pg_advisory_unlock(%s, %s)", lock)
            result = await asyncio.wait_for(manual, 10)
    assert result["success"] is True
    assert [r["trigger"] for r in job_runs(db)] == ["manual"]


def run_cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "RESEND_"))}
    env.update({"DATABASE_URL": db_url, "LOG_FORMAT": "json"})
    return subprocess.run(
        [sys.executable, "-m", "listener", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_jobs_run_cli_prints_only_json_and_a_second_run_sends_nothing(
    db: psycopg.Connection, db_url: str
) -> None:
    client, performer = add_client(db), add_performer(db)
    now = datetime.now(UTC)
    add_booking(
        db,
        client,
        performer,
        status="deposit_verified",
        event_start=now + timedelta(hours=5),
        amount_paid=200,
        deposit_paid_at=now,
    )
    add_booking(db, client, performer, created_at=now - timedelta(days=2))

    cleanup = run_cli(db_url, "jobs", "run", "cleanup")
    first = run_cli(db_url, "jobs", "run", "reminders")
    second = run_cli(db_url, "jobs", "run", "reminders")

    assert cleanup.returncode == 0, cleanup.stderr
    assert json.loads(cleanup.stdout)["summary"]["staleBookings"] == {
        "cancelled": 1,
        "errors": [],
        "batches": 1,
    }
    assert json.loads(first.stdout)["summary"]["bookingReminders"]["sent"] == 1
    assert json.loads(first.stdout)["summary"]["paymentReminders"]["sent"] == 1
    summary = json.loads(second.stdout)["summary"]
    assert (summary["bookingReminders"]["sent"], summary["paymentReminders"]["sent"]) == (0, 0)
    logged = [json.loads(line)["event"] for line in cleanup.stderr.splitlines()]
    assert "job.started" in logged and "job.completed" in logged


def test_jobs_run_all_reports_both_jobs(db_url: str) -> None:
    result = run_cli(db_url, "jobs", "run", "all")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["success"] is True
    assert set(body["cleanup"]["summary"]) >= {"staleBookings", "notifications", "otps", "auditLogs"}
    assert set(body["reminders"]["summary"]) == {"bookingReminders", "paymentReminders"}


def test_daemon_catches_up_at_startup_and_delivers_what_the_jobs_wrote(
    db: psycopg.Connection, db_url: str, spawn_worker
) -> None:
    client, performer = add_client(db), add_performer(db)
    now = datetime.now(UTC)
    stale = add_booking(db, client, performer, created_at=now - timedelta(days=2))
    upcoming = add_booking(
        db,
        client,
        performer,
        status="accepted",
        event_start=now + timedelta(hours=6),
        amount_paid=200,
        deposit_paid_at=now,
    )

    with FakeProviders() as fake:
        worker = spawn_worker(
            db_url, SCHEDULER_ENABLED="true", RESEND_RATE_PER_SECOND="1000", **worker_env(fake.url)
        )

        def delivered() -> bool:
            kinds = {(e["kind"], e["subject_id"]): e["status"] for e in events(db)}
            wanted = [
                ("booking.cancelled", stale),
                ("booking.reminder_due", upcoming),
                ("booking.payment_due", upcoming),
            ]
            return all(kinds.get(key) == "done" for key in wanted)

        wait_until(delivered, timeout=30, message="cancellation and reminders delivered")
        sent = db.execute(
            "SELECT e.kind, d.channel, count(*) FROM worker.deliveries d"
            " JOIN worker.events e ON e.id = d.event_id WHERE d.status = 'sent'"
            " AND e.kind <> 'booking.created' GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        # Through the real SDKs to the fake providers: the catalog's messages, each once.
        assert sent == [
            ("booking.cancelled", "email", 1),
            ("booking.cancelled", "whatsapp", 3),
            ("booking.payment_due", "email", 1),
            ("booking.payment_due", "in_app", 1),
            ("booking.payment_due", "whatsapp", 1),
            ("booking.reminder_due", "email", 2),
            ("booking.reminder_due", "in_app", 2),
            ("booking.reminder_due", "whatsapp", 2),
        ]
        totals = dict(
            db.execute(
                "SELECT channel, count(*) FROM worker.deliveries WHERE status = 'sent' GROUP BY 1"
            ).fetchall()
        )
        assert len(fake.received("twilio")) == totals["whatsapp"]
        assert len(fake.received("resend")) == totals["email"]
        runs = {(r["job"], r["trigger"], r["status"]) for r in job_runs(db)}
        assert runs == {("cleanup", "catch_up", "succeeded"), ("reminders", "catch_up", "succeeded")}
        assert worker.terminate() == 0
    assert worker.events_logged("scheduler.stopped")


def test_a_tick_running_on_a_killed_worker_is_taken_over(
    db: psycopg.Connection, db_url: str, spawn_worker
) -> None:
    client, performer = add_client(db), add_performer(db)
    stale = add_booking(db, client, performer, created_at=datetime.now(UTC) - timedelta(days=2))
    with psycopg.connect(db_url, autocommit=True) as holder:
        # The daemon's start-up cleanup claims today's tick, then waits here: it is "running".
        holder.execute("SELECT pg_advisory_lock(%s, %s)", CLEANUP_LOCK)
        crashed = spawn_worker(db_url, SCHEDULER_ENABLED="true")
        wait_until(lambda: cleanup_running(db) == 1, timeout=30, message="the daemon's cleanup running")
        crashed.kill()
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", CLEANUP_LOCK)
    [orphan] = [r for r in job_runs(db) if r["job"] == "cleanup"]
    assert orphan["status"] == "running"

    async def survivor_takes_over() -> None:
        settings = job_settings(db_url, stale_after_seconds=1, heartbeat_seconds=0.25)
        async with open_pool(db_url) as pool:
            survivor = JobScheduler(pool, settings, worker_id="survivor")

            async def cleaned() -> bool:
                await survivor.run_tick("cleanup", trigger="catch_up")
                return any(r["job"] == "cleanup" and r["status"] == "succeeded" for r in job_runs(db))

            # Once the killed worker's heartbeat is older than STALE_AFTER_SECONDS.
            await async_wait_until(cleaned, timeout=15, interval=0.2, message="the orphaned tick taken over")

    asyncio.run(survivor_takes_over())
    [run] = [r for r in job_runs(db) if r["job"] == "cleanup"]
    assert (run["scheduled_for"], run["worker_id"], run["trigger"]) == (
        orphan["scheduled_for"],
        "survivor",
        "catch_up",
    )
    assert db.execute("SELECT status FROM bookings WHERE id = %s", (stale,)).fetchone()[0] == "cancelled"
    assert db.execute("SELECT count(*) FROM audit_logs WHERE entity_id = %s", (stale,)).fetchone()[0] == 1
