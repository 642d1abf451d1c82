"""`flavor-worker demo`: the whole product with no credentials and no database to set up.

It runs the real daemon (embedded PostgreSQL unless DATABASE_URL is set, console transports),
writes one sample booking with plain SQL and walks it through every status, plus an OTP, so
every message that would go out is printed. It keeps running as the daemon until Ctrl-C
(or, with --exit-when-done, stops itself once the demo's events are handled).

People read it on a terminal: each message is a block, then the ledger as a table and a psql
command to write more rows. Piped or redirected it follows LOG_FORMAT, so with the default
`json` every line of its output is a JSON object.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Literal

import click
import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from core.queries import load_queries
from core.settings import Settings
from handlers.delivery import masked_recipient
from listener.daemon import run_daemon

log = structlog.get_logger(__name__)

QUERIES = load_queries(Path(__file__).with_name("demo.sql"))

#: The booking's walk, after its creation.
STATUSES = ("approved", "deposit_uploaded", "deposit_verified", "accepted", "cancelled")


def demo_log_format(settings: Settings) -> Literal["json", "console"]:
    """Console (readable blocks) on a terminal; piped or redirected, what LOG_FORMAT says."""
    return "console" if sys.stdout.isatty() else settings.log_format


def demo_settings(settings: Settings) -> Settings:
    """Console transports always (the demo never messages anyone), printing in the demo's log
    format; sample admin contacts if unset."""
    return replace(
        settings,
        message_transport="console",
        log_format=demo_log_format(settings),
        admin_whatsapp=settings.admin_whatsapp or "+61400000000",
        admin_email=settings.admin_email or "admin@flavorentertainers.com.au",
    )


async def write_sample_data(conninfo: str) -> list[str]:
    """Insert the sample rows and walk the booking; returns the subjects of the demo's events."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        client_id = await _one(conn, "demo_client", {})
        performer_id = await _one(conn, "demo_performer", {})
        booking_id = await _one(conn, "demo_booking", {"client_id": client_id, "performer_id": performer_id})
        for status in STATUSES:
            await conn.execute(QUERIES["demo_set_status"], {"status": status, "booking_id": booking_id})
        otp_id = await _one(conn, "demo_otp", {})
    return [str(booking_id), f"otp:{otp_id}"]


async def _one(conn: psycopg.AsyncConnection, name: str, params: dict[str, object]) -> object:
    row = await (await conn.execute(QUERIES[name], params)).fetchone()
    assert row is not None
    return row[0]


async def wait_until_handled(conninfo: str, subjects: list[str], timeout: float = 120.0) -> None:
    """Poll until no demo event is pending or processing (the daemon does the work)."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        while True:
            row = await (await conn.execute(QUERIES["demo_open_events"], {"subjects": subjects})).fetchone()
            if row is not None and row[0] == 0:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the demo's events were not handled in time")
            await asyncio.sleep(0.2)


async def print_summary(conninfo: str, subjects: list[str], readable: bool) -> None:
    """The ledger of the demo's events and how to write more rows: a table and a psql command
    for people, one `demo.finished` log line for machines. Recipients masked as in the logs."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        rows = await (await conn.execute(QUERIES["demo_deliveries"], {"subjects": subjects})).fetchall()
    psql = psql_command(conninfo)
    statement = "\n".join(
        line for line in QUERIES["demo_try_it"].splitlines() if not line.startswith("--")
    ) + ";"
    if not readable:
        log.info(
            "demo.finished",
            deliveries=len(rows),
            statuses=dict(Counter(row[5] for row in rows)),
            psql=psql,
            try_sql=statement,
        )
        return
    table = [
        (kind, channel, role or "", _shown(to), template or "", f"{status} ({error})" if error else status)
        for kind, channel, role, to, template, status, error in rows
    ]
    click.echo("\nThe ledger (worker.deliveries):\n")
    for line in _table(("event", "channel", "role", "recipient", "template", "status"), table):
        click.echo(f"  {line}")
    click.echo(f"\n{len(rows)} deliveries.\n")
    click.echo("Try it: while the daemon runs, open the demo's database")
    click.echo(f"  {psql}")
    click.echo("and write a row as the booking app does; its messages are printed here:")
    click.echo("\n".join(f"  {line}" for line in statement.splitlines()) + "\n")


def psql_command(conninfo: str) -> str:
    """A command line that opens the demo's database, without its password (psql asks).

    The embedded server listens only on a socket in its data folder, so its host is that folder.
    """
    params = conninfo_to_dict(conninfo)
    words = ["psql"]
    for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
        if params.get(key):
            words += [flag, str(params[key])]
    if params.get("dbname") and params.get("dbname") != params.get("user"):  # psql's default
        words.append(str(params["dbname"]))
    return shlex.join(words)


def _shown(recipient: str) -> str:
    """A ledger recipient as the table shows it: masked as in the logs, in-app rows by role only."""
    return masked_recipient(recipient).split(":", 1)[0]


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, under a header and a rule."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), line(tuple("-" * width for width in widths)), *(line(row) for row in rows)]


async def run_demo(settings: Settings, conninfo: str, *, exit_when_done: bool) -> None:
    """Run the daemon with the demo's data flowing through it."""
    settings = demo_settings(settings)
    daemon = asyncio.create_task(run_daemon(settings, conninfo, conninfo), name="daemon")
    subjects = await write_sample_data(conninfo)
    waiting = asyncio.create_task(wait_until_handled(conninfo, subjects))
    done, _ = await asyncio.wait({daemon, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if daemon in done:  # stopped (Ctrl-C) or crashed before the demo finished
        waiting.cancel()
        await daemon
        return
    await waiting
    readable = settings.log_format == "console"
    await print_summary(conninfo, subjects, readable)
    if not exit_when_done:
        if readable:
            click.echo("The daemon keeps running (Ctrl-C to stop).\n")
    else:
        if readable:
            click.echo("(This run stops now, --exit-when-done: `make run` keeps the daemon up.)\n")
        signal.raise_signal(signal.SIGTERM)  # the daemon's own graceful shutdown path
    await daemon
