"""APScheduler inside the daemon: the jobs on their crontabs, once per tick across workers.

Every worker runs the same schedule; `worker.job_runs` decides which one runs each tick. At
start-up, and every CATCH_UP_INTERVAL_SECONDS after, the most recent tick of each job runs if
no worker ran it or its run was interrupted (a deploy or a crash over 02:00 does not skip the
day's cleanup; a crashed worker's run is taken over once its heartbeat is STALE_AFTER_SECONDS
old). Misfire grace is MISFIRE_GRACE_SECONDS (an hour by default: APScheduler's 1 s default
would drop a tick the loop was a little late for), late ticks coalesce into one, and a job
never overlaps itself.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from psycopg_pool import AsyncConnectionPool

from core.settings import Settings
from scheduler.runs import Clock, JobName, Trigger, run_scheduled_tick, utc_now
from scheduler.ticks import LocalCronTrigger, previous_fire_time

log = structlog.get_logger(__name__)

#: How often missed or interrupted ticks are looked for after start-up (two small queries per job).
CATCH_UP_INTERVAL_SECONDS = 60
#: At shutdown, a job cancelled for running too long gets this long to record that it failed.
CANCEL_GRACE_SECONDS = 1.0


class JobScheduler:
    """The cleanup and reminder jobs on their schedules, sharing the daemon's loop and pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: Settings,
        *,
        worker_id: str | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.worker_id = worker_id
        self._clock = clock
        zone = ZoneInfo(settings.scheduler_timezone)
        self.triggers: dict[JobName, LocalCronTrigger] = {
            "cleanup": LocalCronTrigger(settings.cleanup_schedule, zone),
            "reminders": LocalCronTrigger(settings.reminder_schedule, zone),
        }
        self._scheduler = AsyncIOScheduler(
            timezone=zone,
            job_defaults={
                "misfire_grace_time": settings.misfire_grace_seconds,
                "coalesce": True,
                "max_instances": 1,
            },
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def running(self) -> bool:
        """True between start() and shutdown() (for /healthz)."""
        return bool(self._scheduler.running)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each scheduled job's crontab, next fire time and run policy (empty before start())."""
        return {
            job.id: {
                "schedule": str(job.trigger),
                "next_run_time": job.next_run_time,
                "misfire_grace_time": job.misfire_grace_time,
                "coalesce": job.coalesce,
                "max_instances": job.max_instances,
            }
            for job in self._scheduler.get_jobs()
        }

    def start(self) -> None:
        """Schedule the jobs and catch up missed ticks; call from inside the running loop."""
        self._stopping = False
        for job, trigger in self.triggers.items():
            self._scheduler.add_job(self.run_tick, trigger, args=[job], id=job, name=f"{job} job")
        self._scheduler.add_job(
            self.catch_up,
            IntervalTrigger(seconds=CATCH_UP_INTERVAL_SECONDS),
            id="catch_up",
            name="missed or interrupted ticks",
        )
        self._scheduler.start()
        self._track(asyncio.get_running_loop().create_task(self.catch_up(), name="scheduler-catch-up"))
        log.info(
            "scheduler.started",
            timezone=self.settings.scheduler_timezone,
            **{f"{job}_schedule": trigger.expression for job, trigger in self.triggers.items()},
        )

    async def run_tick(self, job: JobName, trigger: Trigger = "schedule") -> None:
        """What APScheduler calls at each fire: run the tick `now` belongs to, unless taken.

        The tick runs in a task of its own that shutdown() can wait for and cancel, whoever
        called; the caller waits for it (and is not cancelled with it).
        """
        if self._stopping:
            return
        tick = previous_fire_time(self.triggers[job], self._clock())
        if tick is None:
            return
        work = asyncio.get_running_loop().create_task(self._run(job, tick, trigger), name=f"tick-{job}")
        self._track(work)
        await asyncio.wait({work})

    async def _run(self, job: JobName, tick: datetime, trigger: Trigger) -> None:
        try:
            await run_scheduled_tick(
                self.pool,
                self.settings,
                job,
                tick,
                trigger=trigger,
                clock=self._clock,
                worker_id=self.worker_id,
            )
        except Exception:  # e.g. database down: the schedule goes on
            log.error("scheduler.tick_failed", job=job, scheduled_for=tick.isoformat(), exc_info=True)

    async def catch_up(self) -> None:
        """Run each job's latest tick if every worker missed it, or take over its interrupted run."""
        for job in self.triggers:
            await self.run_tick(job, trigger="catch_up")

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop starting ticks at once; return within about `timeout` seconds.

        A job still running after `timeout - CANCEL_GRACE_SECONDS` is cancelled and records its
        run as failed (another worker, or the next start-up, takes the tick over).
        """
        if self._stopping or not self._scheduler.running:
            return
        self._stopping = True
        self._scheduler.pause()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = {task for task in self._tasks if not task.done() and task is not asyncio.current_task()}
        late: set[asyncio.Task[None]] = set()
        if pending:
            grace = min(CANCEL_GRACE_SECONDS, timeout / 2)
            _, late = await asyncio.wait(pending, timeout=timeout - grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=max(0.0, deadline - loop.time()))
        self._scheduler.shutdown(wait=False)
        # AsyncIOScheduler stops on the loop's next turn; let it, so `running` is False on return.
        await asyncio.sleep(0)
        log.info("scheduler.stopped", cancelled_jobs=len(late))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
