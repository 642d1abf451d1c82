"""`flavor-worker jobs run cleanup|reminders|all`: run a job now and print its JSON summary.

stdout carries only the JSON (so it pipes into `jq`); logs go to stderr. Exit code 0 when every
step succeeded, 1 when a step reported errors or the database was unreachable. Only click is
imported up front, so `jobs run --help` answers at once (the job runner imports APScheduler's
neighbours, the driver and the metrics).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Literal

import click

if TYPE_CHECKING:
    from core.settings import Settings


@click.group()
def jobs() -> None:
    """Run the scheduled cleanup and reminder jobs by hand."""


@jobs.command("run")
@click.argument("job", type=click.Choice(["cleanup", "reminders", "all"]))
def run_job(job: Literal["cleanup", "reminders", "all"]) -> None:
    """Run JOB once now (serialised with scheduled runs) and print its JSON summary."""
    import asyncio

    import psycopg

    from core.db import resolve_database_url
    from core.logs import configure_logging
    from core.settings import load_settings
    from listener.migrate import not_migrated_advice
    from scheduler.batches import error_text

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, sys.stderr, settings.secret_values())
    conninfo = resolve_database_url(settings)
    try:
        result = asyncio.run(_run_once(settings, conninfo, job))
    except psycopg.Error as exc:
        reason = not_migrated_advice(conninfo, exc) or error_text(exc)
        click.echo(f"jobs run {job} failed: {reason}", err=True)
        raise SystemExit(1) from None
    click.echo(json.dumps(result, indent=2))
    if not result["success"]:
        raise SystemExit(1)


async def _run_once(
    settings: Settings, conninfo: str, job: Literal["cleanup", "reminders", "all"]
) -> dict[str, Any]:
    from core.db import create_pool
    from scheduler.runs import run_job_now

    pool = create_pool(conninfo, 2)
    await pool.open(wait=True, timeout=15)
    try:
        return await run_job_now(pool, settings, job, "manual")
    finally:
        await pool.close()
