"""Crontab expressions read as cron reads them, for the settings check and the scheduler.

Settings validate `CLEANUP_CRON` / `REMINDERS_CRON` with the same parser the scheduler fires
them with, so an expression accepted at start-up is one the scheduler can run.
"""

from __future__ import annotations

from datetime import tzinfo

from apscheduler.triggers.cron import CronTrigger

#: Crontab day numbers: 0 and 7 are both Sunday.
_CRONTAB_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def crontab_trigger(expression: str, timezone: tzinfo) -> CronTrigger:
    """APScheduler's CronTrigger for a five-field crontab; ValueError names what is wrong."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"crontab needs 5 fields, got {expression!r}")
    minute, hour, day, month, day_of_week = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=crontab_day_of_week(day_of_week),
        timezone=timezone,
    )


def crontab_day_of_week(field: str) -> str:
    """Crontab's day-of-week field in APScheduler's terms.

    Crontab counts from Sunday (0 or 7), APScheduler 3 from Monday (0), and its `from_crontab`
    passes numbers through unchanged ("0 2 * * 1" would run on Tuesdays). Numbers are expanded
    to day names, which both read the same way.
    """
    if field == "*" or any(char.isalpha() for char in field):
        return field
    days: list[str] = []
    for part in field.split(","):
        base, _, step = part.partition("/")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = int(start), int(end)
        else:
            first = int(base)
            last = 7 if step else first
        if not 0 <= first <= last <= 7:
            raise ValueError(f"day of week out of range 0-7: {part!r}")
        for number in range(first, last + 1, int(step or 1)):
            name = _CRONTAB_DAYS[number]
            if name not in days:
                days.append(name)
    return ",".join(days)
