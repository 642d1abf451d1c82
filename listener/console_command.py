"""`flavor-worker console`: the operator console alone, for local use (no claim loop, no jobs),
and `--hash-password` to make a CONSOLE_PASSWORD_HASH value.

The web stack and the settings are imported inside the command, not here: `--help` of every
command answers in well under a quarter second (tests/test_startup.py).
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from core.settings import Settings


@click.command("console")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--hash-password",
    "make_hash",
    is_flag=True,
    help="Read a password from the terminal, print its CONSOLE_PASSWORD_HASH value, and exit.",
)
def console(host: str, port: int, make_hash: bool) -> None:
    """Serve the operator console (http://HOST:PORT/console/) against DATABASE_URL."""
    from core.db import resolve_database_url
    from core.logs import configure_logging
    from core.settings import CONFIG_ERROR_EXIT, load_settings
    from listener.http.console.auth import ConsoleAuth, hash_password

    if make_hash:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        click.echo(hash_password(password))
        return
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, secrets=settings.secret_values())
    if ConsoleAuth(settings).closed:
        click.echo("the console is closed: set CONSOLE_PASSWORD_HASH (or CONSOLE_PASSWORD)", err=True)
        raise SystemExit(CONFIG_ERROR_EXIT)
    asyncio.run(_serve(settings, resolve_database_url(settings), host, port))


async def _serve(settings: Settings, conninfo: str, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    import structlog
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    from core.db import create_pool
    from listener.http.console.app import console_mount
    from listener.http.console.guard import PREFIX
    from listener.http.server import HttpServer

    pool = create_pool(conninfo, 4)
    await pool.open()
    app = Starlette(
        routes=[
            Route("/", lambda request: RedirectResponse(f"{PREFIX}/", 303)),
            console_mount(settings, pool),
        ]
    )
    server = HttpServer(app, port, host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        structlog.get_logger(__name__).info("console.serving", url=f"http://{host}:{server.port}{PREFIX}/")
        await stop.wait()
    finally:
        await server.stop()
        await pool.close()
