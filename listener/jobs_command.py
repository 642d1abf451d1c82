"""`flavor-worker jobs run cleanup|reminders|all`: run a job now and print its JSON summary.

stdout carries only the JSON (so it pipes into `jq`); logs go to stderr. Exit code 0 when every
step succeeded, 1 when a step reported errors or the database was unreachable.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Literal

import click
import psycopg

from core.db import create_pool, resolve_database_url
from core.logs import configure_logging
from core.settings import Settings, load_settings
from scheduler.batches import error_text
from scheduler.runs import run_job_now


@click.group()
def jobs() -> None:
    """Run the scheduled cleanup and reminder jobs by hand."""


@jobs.command("run")
@click.argument("job", type=click.Choice(["cleanup", "reminders", "all"]))
def run_job(job: Literal["cleanup", "reminders", "all"]) -> None:
    """Run JOB once now (serialised with scheduled runs) and print its JSON summary."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, sys.stderr, settings.secret_values())
    try:
        result = asyncio.run(_run_once(settings, resolve_database_url(settings), job))
    except psycopg.Error as exc:
        click.echo(f"jobs run {job} failed: {error_text(exc)}", err=True)
        raise SystemExit(1) from None
    click.echo(json.dumps(result, indent=2))
    if not result["success"]:
        raise SystemExit(1)


async def _run_once(
    settings: Settings, conninfo: str, job: Literal["cleanup", "reminders", "all"]
) -> dict[str, Any]:
    pool = create_pool(conninfo, 2)
    await pool.open(wait=True, timeout=15)
    try:
        return await run_job_now(pool, settings, job, "manual")
    finally:
        await pool.close()
