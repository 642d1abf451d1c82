"""When the jobs fire: crontab triggers in an IANA zone, and the tick a moment belongs to.

A tick is identified by its scheduled instant (UTC in `worker.job_runs.scheduled_for`), which
every worker computes the same way from the crontab, so N workers agree on which tick is due.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.triggers.base import BaseTrigger

from core.crontab import crontab_trigger

#: How far back to look for the previous tick; widened step by step so minute crons stay cheap.
_LOOKBACKS = (
    timedelta(hours=2),
    timedelta(days=2),
    timedelta(days=8),
    timedelta(days=32),
    timedelta(days=367),
)


class LocalCronTrigger(BaseTrigger):
    """A crontab in a time zone, run once per wall-clock time like cron does across DST.

    APScheduler's CronTrigger fires a fixed-hour job twice when the clocks go back (02:00 AEDT and
    again 02:00 AEST in Sydney); a daily cleanup must run once, so the repeated wall time is
    skipped unless the hour field is `*` (an hourly job still runs every real hour). When the
    clocks go forward, the missing 02:00 fires at the first instant after the gap, once.
    """

    __slots__ = ("_cron", "_every_hour", "expression")

    def __init__(self, expression: str, timezone: tzinfo) -> None:
        self.expression = expression
        self._cron = crontab_trigger(expression, timezone)
        self._every_hour = any(f.name == "hour" and str(f) == "*" for f in self._cron.fields)

    @property
    def timezone(self) -> tzinfo:
        return self._cron.timezone

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire = self._cron.get_next_fire_time(previous_fire_time, now)
        while fire is not None and not self._every_hour and _is_repeated_wall_time(fire):
            fire = self._cron.get_next_fire_time(fire, fire)
        return fire

    def __str__(self) -> str:
        return f"cron[{self.expression} {self.timezone}]"


def _is_repeated_wall_time(moment: datetime) -> bool:
    """True for the second occurrence of an ambiguous local time (the hour after clocks go back)."""
    wall = moment.replace(tzinfo=None)
    first = wall.replace(tzinfo=moment.tzinfo, fold=0)
    second = wall.replace(tzinfo=moment.tzinfo, fold=1)
    ambiguous = first.utcoffset() != second.utcoffset()
    return ambiguous and moment.utcoffset() == second.utcoffset()


def fire_times(trigger: BaseTrigger, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in [start, end], in order, in UTC.

    UTC because Python compares and subtracts two datetimes of one zone by wall time, ignoring
    DST folds; instants in UTC are what the job_runs rows and the tests need.
    """
    times: list[datetime] = []
    end = end.astimezone(UTC)
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire.astimezone(UTC) <= end:
        times.append(fire.astimezone(UTC))
        fire = trigger.get_next_fire_time(fire, fire)
    return times


def previous_fire_time(trigger: BaseTrigger, now: datetime) -> datetime | None:
    """The latest fire time at or before `now` (UTC): the tick a run at `now` belongs to."""
    for lookback in _LOOKBACKS:
        times = fire_times(trigger, now - lookback, now)
        if times:
            return times[-1]
    return None
