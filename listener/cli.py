"""The `flavor-worker` command line (also `python -m listener`).

Exit codes: 0 success, 1 runtime failure (database unreachable, schema behind, a failed
check), 2 bad configuration or usage.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import click
import psycopg
import structlog

from core.db import resolve_database_url
from core.logs import configure_logging
from core.redaction import mask_text
from core.settings import Settings, load_settings
from listener import admin

log = structlog.get_logger(__name__)


def _json_default(value: Any) -> str:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, default=_json_default, indent=2))


class AppContext:
    """Settings and the database URL, resolved once per command (lazily: `--help` needs neither)."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._conninfo: str | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def conninfo(self) -> str:
        if self._conninfo is None:
            self._conninfo = resolve_database_url(self.settings)
        return self._conninfo

    def configure_logging(self, stream: Any = None) -> None:
        configure_logging(
            self.settings.log_level, self.settings.log_format, stream, self.settings.secret_values()
        )


pass_app = click.make_pass_decorator(AppContext, ensure=True)


class WorkerCLI(click.Group):
    """Database errors end any command with one readable line and exit code 1, not a traceback.

    Commands in `LAZY_COMMANDS` are imported only when invoked, so the daemon's process does not
    carry the benchmark's or the job runner's modules. `bench` lives in the test kit, a separate
    distribution a dyno does not install: without it, the command says how to get it.
    """

    LAZY_COMMANDS: ClassVar[dict[str, str]] = {
        "bench": "testkit.bench.cli:bench",
        "console": "listener.http.console.command:console",
        "jobs": "listener.jobs_command:jobs",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY_COMMANDS:
            module, _, attr = self.LAZY_COMMANDS[cmd_name].partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as exc:
                if exc.name is None or not exc.name.startswith("testkit"):
                    raise
                return _testkit_missing(cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            click.echo(f"database error: {mask_text(first)}", err=True)
            raise SystemExit(1) from None


def _testkit_missing(cmd_name: str) -> click.Command:
    """Stands in for a test-kit command where the kit is not installed (as on a dyno)."""

    @click.command(cmd_name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def missing(args: tuple[str, ...]) -> None:
        click.echo(
            f"`flavor-worker {cmd_name}` is part of the test kit, which this install does not have: "
            "from a checkout run `make bench`, or `pip install -e ./testkit` into this environment",
            err=True,
        )
        raise SystemExit(2)

    return missing


@click.group(cls=WorkerCLI, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """flavor-worker: messaging and background jobs for the Flavor booking platform."""


@main.command()
@pass_app
def run(app: AppContext) -> None:
    """Run the daemon: LISTEN for events, deliver them, run the scheduled jobs."""
    from listener.daemon import SchemaBehindError, ensure_schema, run_daemon

    app.configure_logging()
    try:
        ensure_schema(app.conninfo, auto_migrate=app.settings.database_url is None)
    except (SchemaBehindError, psycopg.OperationalError) as exc:
        log.error("daemon.cannot_start", error=str(exc))
        raise SystemExit(1) from None
    asyncio.run(run_daemon(app.settings, app.conninfo))


@main.command()
@click.option("--exit-when-done", is_flag=True, help="Stop once the demo's events are handled.")
@click.option(
    "--database-url",
    help="Run against this database instead of the embedded one: it is migrated (with the "
    "reference schema), sample rows are written to it, and its pending events are handled "
    "with console transports, so never point it at a real platform's database.",
)
@pass_app
def demo(app: AppContext, exit_when_done: bool, database_url: str | None) -> None:
    """Run the daemon with console transports and walk a sample booking through its statuses.

    The demo uses the embedded database whatever DATABASE_URL says: a developer's `.env`
    pointing at staging must not get sample rows, nor have its real messages simulated away.
    """
    from core.embedded import start_embedded_server
    from listener.demo import run_demo
    from listener.migrate import migrate as apply_migrations

    configure_logging(app.settings.log_level, "console", secrets=app.settings.secret_values())
    if app.settings.database_url and not database_url:
        log.info("demo.embedded_database", note="DATABASE_URL is not used by the demo")
    conninfo = database_url or start_embedded_server(Path(app.settings.embedded_data_dir))
    try:
        apply_migrations(conninfo, reference_schema=True)
    except psycopg.Error as exc:
        log.error("demo.cannot_start", error=str(exc))
        raise SystemExit(1) from None
    asyncio.run(run_demo(app.settings, conninfo, exit_when_done=exit_when_done))


@main.command()
@click.option("--reference-schema", is_flag=True, help="Also create the reference app tables.")
@pass_app
def migrate(app: AppContext, reference_schema: bool) -> None:
    """Apply the worker's migrations (and install its triggers on the app tables)."""
    from listener.migrate import TRIGGER_TABLES
    from listener.migrate import migrate as apply_migrations

    app.configure_logging(sys.stderr)
    try:
        report = apply_migrations(app.conninfo, reference_schema=reference_schema)
    except psycopg.Error as exc:
        click.echo(f"migrate failed: {exc}", err=True)
        raise SystemExit(1) from None
    click.echo(f"migrations applied: {', '.join(report.applied) or 'none (already current)'}")
    if reference_schema:
        click.echo(f"reference tables created: {', '.join(report.reference_created) or 'none'}")
        if report.reference_skipped:
            click.echo(f"reference tables skipped (already exist): {', '.join(report.reference_skipped)}")
    click.echo(f"event triggers installed on: {', '.join(report.triggers_on) or 'no tables'}")
    missing = [t for t in TRIGGER_TABLES if t not in report.triggers_on]
    if missing:
        click.echo(f"warning: no table {', '.join(missing)} yet; rerun migrate once it exists", err=True)


@main.group()
def events() -> None:
    """Inspect and requeue events in the outbox."""


@events.command("list")
@click.option("--status", type=click.Choice(["pending", "processing", "done", "failed", "expired"]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@pass_app
def events_list(app: AppContext, status: str | None, limit: int) -> None:
    """Newest events first."""
    for row in admin.list_events(app.conninfo, status, limit):
        error = f"  {row['last_error']}" if row["last_error"] else ""
        click.echo(
            f"{row['id']:>8}  {row['status']:<10} {row['kind']:<26} attempts={row['attempts']}"
            f"  {row['created_at']:%Y-%m-%d %H:%M:%S}{error}"
        )


@events.command("show")
@click.argument("event_id", type=int)
@pass_app
def events_show(app: AppContext, event_id: int) -> None:
    """One event, its payload and its deliveries, as JSON."""
    event = admin.show_event(app.conninfo, event_id)
    if event is None:
        click.echo(f"no event {event_id}", err=True)
        raise SystemExit(1)
    echo_json(event)


@events.command("retry")
@click.argument("event_id", type=int, required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Requeue every failed event.")
@pass_app
def events_retry(app: AppContext, event_id: int | None, all_failed: bool) -> None:
    """Requeue one finished event, or all failed ones (what was sent is not sent again)."""
    if (event_id is None) == (not all_failed):
        raise click.UsageError("give an EVENT_ID or --failed (not both)")
    ids = admin.retry_events(app.conninfo, None if all_failed else event_id)
    if event_id is not None and not ids:
        click.echo(f"event {event_id} is not failed, expired or done (or does not exist)", err=True)
        raise SystemExit(1)
    click.echo(f"requeued {len(ids)} event(s){': ' + ', '.join(map(str, ids)) if ids else ''}")


@main.command()
@pass_app
def check(app: AppContext) -> None:
    """Check settings, database, schema and LISTEN/NOTIFY; one line per problem."""
    from listener.checks import run_checks

    problems = run_checks(app.settings)
    for line in problems:
        click.echo(f"problem: {line}")
    if problems:
        raise SystemExit(1)
    click.echo("ok: settings valid, database reachable, schema current, LISTEN/NOTIFY works")


