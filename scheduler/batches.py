"""Run one bounded statement repeatedly until it has nothing left, collecting counts and errors.

Each batch is its own short transaction (CLEANUP_BATCH_SIZE rows at most), so a table of
millions of rows is never locked for seconds by one statement. A failing batch ends that step
and its error goes into the step's summary; the other steps still run (the seed's "partial
failures don't stop the entire job").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger(__name__)

#: One batch: run the statement on a connection and return its counts, e.g. {"deleted": 1000}.
Batch = Callable[[psycopg.AsyncConnection[Any]], Awaitable[dict[str, int]]]


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
    except Exception as exc:  # the seed's graceful degradation: report, let the other steps run
        errors.append(f"{type(exc).__name__}: {exc}".strip())
        log.error("job.step_failed", step=step, batches=batches, exc_info=True)
    return {**totals, "errors": errors, "batches": batches}
