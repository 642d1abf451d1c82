"""Running a job once, with its `worker.job_runs` row, its advisory lock and its JSON summary.

Two ways in:

* `run_scheduled_tick` — a tick of the crontab. The INSERT into job_runs (unique per job and
  scheduled instant) decides which of N workers runs it; the others skip. A tick whose run was
  interrupted (row `failed`, or `running` for a worker whose heartbeat stopped) is taken over
  by exactly one worker, at most MAX_TICK_ATTEMPTS times in all.
* `run_job_now` — the CLI and the HTTP cron endpoints. Always runs, recorded with its own row.

Both hold an advisory lock per job while they run, so a manual run never overlaps a
scheduled one (the second waits for the first).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import structlog
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from core.metrics import METRICS
from core.settings import Settings
from scheduler.batches import error_text
from scheduler.cleanup import run_all_cleanup_jobs
from scheduler.queries import QUERIES
from scheduler.reminders import run_all_reminder_jobs

log = structlog.get_logger(__name__)

JobName = Literal["cleanup", "reminders"]
Trigger = Literal["schedule", "catch_up", "manual", "http"]
Clock = Callable[[], datetime]
JobRunner = Callable[[AsyncConnectionPool, Settings, datetime], Awaitable[dict[str, Any]]]

JOBS: dict[JobName, JobRunner] = {"cleanup": run_all_cleanup_jobs, "reminders": run_all_reminder_jobs}
#: Advisory lock keys: a class unique to this app's job locks, and one id per job.
JOB_LOCK_CLASS = 0x466C_6A62  # "Fljb"
JOB_LOCK_IDS: dict[JobName, int] = {"cleanup": 1, "reminders": 2}
#: How many times one tick may be claimed: its first run and two takeovers of an interrupted run.
MAX_TICK_ATTEMPTS = 3


def utc_now() -> datetime:
    return datetime.now(UTC)


def cron_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and Z, as the platform's JSON shows (`2025-10-07T02:00:00.000Z`)."""
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def summary_succeeded(summary: dict[str, Any]) -> bool:
    return all(not step["errors"] for step in summary.values())


async def run_job_now(
    pool: AsyncConnectionPool,
    settings: Settings,
    job: Literal["cleanup", "reminders", "all"],
    trigger: str = "manual",
    *,
    clock: Clock = utc_now,
    worker_id: str | None = None,
) -> dict[str, Any]:
    """Run a job now and return the platform's cron JSON; `all` runs cleanup then reminders.

    `trigger` is recorded in job_runs: "manual" (CLI) or "http" (the cron endpoints).
    """
    if trigger not in ("manual", "http"):
        raise ValueError(f"trigger must be 'manual' or 'http', not {trigger!r}")
    if job != "all":
        return await _run_locked(pool, settings, job, trigger, clock, worker_id)  # type: ignore[arg-type]
    results = {
        name: await _run_locked(pool, settings, name, trigger, clock, worker_id) for name in get_args(JobName)
    }
    return {
        "success": all(result["success"] for result in results.values()),
        "timestamp": cron_timestamp(clock()),
        **results,
    }


async def run_scheduled_tick(
    pool: AsyncConnectionPool,
    settings: Settings,
    job: JobName,
    tick: datetime,
    *,
    trigger: Trigger = "schedule",
    clock: Clock = utc_now,
    worker_id: str | None = None,
) -> dict[str, Any] | None:
    """Run the crontab tick `tick` of `job` unless a worker already has; None when skipped."""
    run_id = await _claim_tick(pool, settings, job, tick, trigger, worker_id)
    if run_id is None:
        if trigger == "catch_up":  # the periodic look finds the tick done nearly every time
            log.debug("job.catch_up_not_needed", job=job, scheduled_for=tick.isoformat())
        else:
            log.info("job.skipped", job=job, scheduled_for=tick.isoformat(), reason="tick already claimed")
            METRICS.job_runs.labels(job, "skipped").inc()
        return None
    # Waiting for the lock counts as running: interrupted there, the row says failed too.
    async with _abort_recorded(pool, job, run_id), job_lock(pool, job):
        return await _execute(pool, settings, job, run_id, trigger, clock)


async def _run_locked(
    pool: AsyncConnectionPool,
    settings: Settings,
    job: JobName,
    trigger: str,
    clock: Clock,
    worker_id: str | None,
) -> dict[str, Any]:
    async with job_lock(pool, job):
        # Inside the lock, so two manual runs get distinct clock_timestamp() instants.
        run_id = await _claim_run(pool, job, None, trigger, worker_id)
        if run_id is None:
            raise RuntimeError(f"job_runs already holds a {job} run at this instant")
        async with _abort_recorded(pool, job, run_id):
            return await _execute(pool, settings, job, run_id, trigger, clock)


#: Longest pause between two tries of a busy job lock.
LOCK_RETRY_MAX_SECONDS = 1.0


@contextlib.asynccontextmanager
async def job_lock(pool: AsyncConnectionPool, job: JobName) -> AsyncIterator[None]:
    """Hold the job's advisory lock on a pooled connection for the duration of the block.

    The lock is transaction-scoped, in a transaction kept open on that connection until the
    block ends: behind a transaction pooler (PgBouncer, Supabase's port 6543) a client keeps its
    server connection only while a transaction is open, so a session lock would be taken on one
    server connection and its unlock sent to another. Ending the transaction, however the block
    ends (even on a broken connection), releases the lock. The transaction holds nothing else
    (READ COMMITTED keeps no snapshot between statements), so it does not hold back vacuum.

    Waiting for it holds no connection: the lock is tried and, when busy, the connection goes
    back to the pool until the next try, so runs queued behind a long one (cron calls, manual
    runs) cannot take the connections the claim loop needs. Waiters are not served in arrival
    order, and one may start up to LOCK_RETRY_MAX_SECONDS after the lock is freed.
    """
    params = {"lock_class": JOB_LOCK_CLASS, "lock_id": JOB_LOCK_IDS[job]}
    pause = 0.05
    while True:
        async with pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(QUERIES["try_lock_job"], params)).fetchone()
            if row and row[0]:
                yield
                return
        await asyncio.sleep(pause)
        pause = min(LOCK_RETRY_MAX_SECONDS, pause * 2)


async def _claim_run(
    pool: AsyncConnectionPool, job: JobName, tick: datetime | None, trigger: str, worker_id: str | None
) -> int | None:
    params = {"job": job, "scheduled_for": tick, "trigger": trigger, "worker_id": worker_id}
    async with pool.connection() as conn:
        row = await (await conn.execute(QUERIES["claim_job_run"], params)).fetchone()
    return row[0] if row else None


async def _claim_tick(
    pool: AsyncConnectionPool,
    settings: Settings,
    job: JobName,
    tick: datetime,
    trigger: str,
    worker_id: str | None,
) -> int | None:
    """The tick's new run row, or an interrupted run's row taken over; None when another worker has it."""
    run_id = await _claim_run(pool, job, tick, trigger, worker_id)
    if run_id is not None:
        return run_id
    params = {
        "job": job,
        "scheduled_for": tick,
        "trigger": trigger,
        "worker_id": worker_id,
        "max_attempts": MAX_TICK_ATTEMPTS,
        "stale_seconds": settings.stale_after_seconds,
    }
    async with pool.connection() as conn:
        row = await (await conn.execute(QUERIES["reclaim_tick"], params)).fetchone()
    if row is None:
        return None
    run_id, previous_status, previous_worker, attempt = row
    log.warning(
        "job.tick_reclaimed",
        job=job,
        run_id=run_id,
        scheduled_for=tick.isoformat(),
        previous_status=previous_status,
        previous_worker=previous_worker,
        attempt=attempt,
    )
    return run_id


@contextlib.asynccontextmanager
async def _abort_recorded(pool: AsyncConnectionPool, job: JobName, run_id: int) -> AsyncIterator[None]:
    """Mark the run failed when the block is interrupted (cancelled at shutdown, bookkeeping failed)."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await _finish(pool, run_id, "failed", {"success": False, "error": error_text(exc)})
        METRICS.job_runs.labels(job, "failed").inc()
        log.error("job.aborted", job=job, run_id=run_id, exc_info=True)
        raise


async def _execute(
    pool: AsyncConnectionPool, settings: Settings, job: JobName, run_id: int, trigger: str, clock: Clock
) -> dict[str, Any]:
    now = clock()
    log.info("job.started", job=job, run_id=run_id, trigger=trigger, now=now.isoformat())
    summary = await JOBS[job](pool, settings, now)
    result = {"success": summary_succeeded(summary), "timestamp": cron_timestamp(now), "summary": summary}
    outcome = "succeeded" if result["success"] else "failed"
    await _finish(pool, run_id, outcome, result)
    METRICS.job_runs.labels(job, outcome).inc()
    counts = {step: {k: v for k, v in values.items() if k != "errors"} for step, values in summary.items()}
    log.info(
        "job.completed",
        job=job,
        run_id=run_id,
        trigger=trigger,
        success=result["success"],
        errors=sum(len(step["errors"]) for step in summary.values()),
        **counts,
    )
    return result


async def _finish(pool: AsyncConnectionPool, run_id: int, status: str, summary: dict[str, Any]) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            QUERIES["finish_job_run"], {"run_id": run_id, "status": status, "summary": Jsonb(summary)}
        )
