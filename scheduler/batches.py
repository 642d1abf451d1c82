"""Run one bounded statement repeatedly until it has nothing left, collecting counts and errors.

Each batch is its own short transaction (CLEANUP_BATCH_SIZE rows at most), so a table of
millions of rows is never locked for seconds by one statement. A failing batch ends that step
and its error goes into the step's summary; the other steps still run (the platform's "partial
failures don't stop the entire job").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from core.redaction import mask_text

log = structlog.get_logger(__name__)

#: One batch: run the statement on a connection and return its counts, e.g. {"deleted": 1000}.
Batch = Callable[[psycopg.AsyncConnection[Any]], Awaitable[dict[str, int]]]


def error_text(exc: BaseException) -> str:
    """An error as summaries show it (job_runs, the cron endpoints' JSON): type and message, masked.

    Database errors quote the offending row (`DETAIL: Key (email)=(...)`), and summaries leave
    the process, so emails, phone numbers and URL passwords are masked as in the logs.
    """
    return mask_text(f"{type(exc).__name__}: {exc}".strip())


async def repeat_in_batches(
    pool: AsyncConnectionPool, step: str, batch: Batch, batch_size: int, count_key: str
) -> dict[str, Any]:
    """Run `batch` until its `count_key` count falls below `batch_size`.

    Returns the step's summary: `{count_key: total, <other counts>, "errors": [...], "batches": n}`.
    """
    totals: dict[str, int] = {count_key: 0}
    errors: list[str] = []
    batches = 0
    try:
        while True:
            async with pool.connection() as conn:
                counts = await batch(conn)
            batches += 1
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
            log.debug("job.batch", step=step, batch=batches, **counts)
            if counts[count_key] < batch_size:
                break
    except Exception as exc:  # the platform's graceful degradation: report, let the other steps run
        errors.append(error_text(exc))
        log.error("job.step_failed", step=step, batches=batches, exc_info=True)
    return {**totals, "errors": errors, "batches": batches}
