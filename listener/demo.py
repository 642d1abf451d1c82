"""`flavor-worker demo`: the whole product with no credentials and no database to set up.

It runs the real daemon (embedded PostgreSQL unless DATABASE_URL is set, console transports),
writes one sample booking with plain SQL and walks it through every status, plus an OTP, so
every message that would go out is printed. It keeps running as the daemon until Ctrl-C
(or, with --exit-when-done, stops itself once the demo's events are handled).
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from pathlib import Path

import click
import psycopg

from core.queries import load_queries
from core.redaction import mask_email, mask_phone
from core.settings import Settings
from listener.daemon import run_daemon

QUERIES = load_queries(Path(__file__).with_name("demo.sql"))

#: The booking's walk, after its creation.
STATUSES = ("approved", "deposit_uploaded", "deposit_verified", "accepted", "cancelled")


def demo_settings(settings: Settings) -> Settings:
    """Console transports always (the demo never messages anyone); sample admin contacts if unset."""
    return replace(
        settings,
        message_transport="console",
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


async def print_summary(conninfo: str, subjects: list[str]) -> None:
    """One line per delivery, with recipients masked as in the logs."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        rows = await (await conn.execute(QUERIES["demo_deliveries"], {"subjects": subjects})).fetchall()
    click.echo("\nDemo deliveries (the ledger, worker.deliveries):")
    for kind, channel, role, recipient, template, status, error in rows:
        shown = mask_email(recipient) if "@" in recipient else mask_phone(recipient)
        if recipient.startswith(("client:", "performer:", "admin")):
            shown = recipient.split(":", 1)[0]
        suffix = f" ({error})" if error else ""
        click.echo(
            f"  {kind:<26} {channel:<9} {role or '':<10} {shown:<24} {template or '':<28} {status}{suffix}"
        )
    click.echo(f"{len(rows)} deliveries.\n")


async def run_demo(settings: Settings, conninfo: str, *, exit_when_done: bool) -> None:
    """Run the daemon with the demo's data flowing through it."""
    daemon = asyncio.create_task(run_daemon(demo_settings(settings), conninfo, conninfo), name="daemon")
    subjects = await write_sample_data(conninfo)
    waiting = asyncio.create_task(wait_until_handled(conninfo, subjects))
    done, _ = await asyncio.wait({daemon, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if daemon in done:  # stopped (Ctrl-C) or crashed before the demo finished
        waiting.cancel()
        await daemon
        return
    await waiting
    await print_summary(conninfo, subjects)
    if not exit_when_done:
        click.echo("The daemon keeps running: write rows with psql to see more messages (Ctrl-C to stop).")
    else:
        signal.raise_signal(signal.SIGTERM)  # the daemon's own graceful shutdown path
    await daemon
