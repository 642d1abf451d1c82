"""The `flavor-worker` command line (also `python -m listener`).

Exit codes: 0 success, 1 runtime failure (database unreachable, schema behind, a failed
check), 2 bad configuration or usage.

This module imports only click at the top: `--help` of any command must answer in well under
a quarter of a second, and the database driver, structlog and the settings' validators cost
several times that. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import importlib
import json
import sys
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import click

if TYPE_CHECKING:
    from core.settings import Settings


def _json_default(value: Any) -> str:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, default=_json_default, indent=2))


def _log() -> Any:
    import structlog

    return structlog.get_logger(__name__)


class AppContext:
    """Settings and the database URLs, resolved once per command (lazily: `--help` needs neither)."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._conninfo: str | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from core.settings import load_settings

            self._settings = load_settings()
        return self._settings

    @property
    def conninfo(self) -> str:
        """DATABASE_URL, else the embedded server (started on first use)."""
        if self._conninfo is None:
            from core.db import resolve_database_url

            self._conninfo = resolve_database_url(self.settings)
        return self._conninfo

    @property
    def resolved_conninfo(self) -> str | None:
        """The database URL if a command has used one (for explaining its errors), else None."""
        return self._conninfo

    @property
    def session_conninfo(self) -> str:
        """Where a session must hold (LISTEN, advisory locks): LISTEN_DATABASE_URL, else `conninfo`."""
        return self.settings.listen_database_url or self.conninfo

    def variable_warnings(self) -> list[str]:
        """`did you mean` for variables set in the environment or `.env` that are none of ours."""
        from core.settings import configured_names, unknown_variable_warnings

        return unknown_variable_warnings(configured_names())

    def configure_logging(self, stream: Any = None) -> None:
        from core.logs import configure_logging

        configure_logging(
            self.settings.log_level, self.settings.log_format, stream, self.settings.secret_values()
        )


pass_app = click.make_pass_decorator(AppContext, ensure=True)


class WorkerCLI(click.Group):
    """Database errors end any command with one readable line and exit code 1, not a traceback;
    on a database the worker never migrated, that line says to run `flavor-worker migrate`.

    Commands in `LAZY_COMMANDS` are imported only when invoked (their one-line help is given here,
    so `flavor-worker --help` imports none of them). `bench` lives in the test kit, a separate
    distribution a dyno does not install: without it, the command says how to get it.
    """

    LAZY_COMMANDS: ClassVar[dict[str, tuple[str, str]]] = {
        "bench": ("testkit.bench.cli:bench", "Measure drain rate, latency, slow-provider throughput."),
        "console": ("listener.console_command:console", "Serve the operator console alone."),
        "jobs": ("listener.jobs_command:jobs", "Run the scheduled cleanup and reminder jobs by hand."),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY_COMMANDS:
            module, _, attr = self.LAZY_COMMANDS[cmd_name][0].partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as exc:
                if exc.name is None or not exc.name.startswith("testkit"):
                    raise
                return _testkit_missing(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands' one-line help, without importing the lazy ones."""
        rows = []
        for name in self.list_commands(ctx):
            if name in self.LAZY_COMMANDS:
                rows.append((name, self.LAZY_COMMANDS[name][1]))
            elif (command := super().get_command(ctx, name)) is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # Their classes are looked up, not imported: an error of a module that was never
            # imported cannot have been raised, and importing psycopg costs `--help` 150 ms.
            embedded, psycopg = sys.modules.get("core.embedded"), sys.modules.get("psycopg")
            if embedded is not None and isinstance(exc, embedded.EmbeddedServerMissing):
                click.echo(f"configuration error: {exc}", err=True)
                raise SystemExit(2) from None
            if psycopg is not None and isinstance(exc, psycopg.Error):
                click.echo(f"database error: {_describe_database_error(ctx, exc)}", err=True)
                raise SystemExit(1) from None
            raise


def _describe_database_error(ctx: click.Context, exc: Exception) -> str:
    """The error's first line, masked, or what to do when the database is not migrated."""
    from core.redaction import mask_text
    from listener.migrate import not_migrated_advice

    app = ctx.find_object(AppContext)
    advice = not_migrated_advice(app.resolved_conninfo, exc) if app is not None else None
    return advice or mask_text((str(exc).strip().splitlines() or [type(exc).__name__])[0])


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
@click.version_option(package_name="flavor-worker", prog_name="flavor-worker")
@click.pass_context
def main(ctx: click.Context) -> None:
    """flavor-worker: messaging and background jobs for the Flavor booking platform."""
    ctx.ensure_object(AppContext)  # here, so a failed command's error can be explained with it


@main.command()
@pass_app
def run(app: AppContext) -> None:
    """Run the daemon: LISTEN for events, deliver them, run the scheduled jobs."""
    import asyncio

    from listener.daemon import StartRefused, preflight, run_daemon

    app.configure_logging()
    for warning in app.variable_warnings():
        _log().warning("settings.unknown_variable", warning=warning)
    try:
        preflight(app.settings, app.conninfo, app.session_conninfo)
    except StartRefused as exc:
        _log().error("daemon.cannot_start", error=str(exc))
        raise SystemExit(1) from None
    # DATABASE_URL serving LISTEN too was just proven by the preflight to keep a session: the
    # pool may prepare its statements. With LISTEN_DATABASE_URL set it may be a transaction pooler.
    keeps_session = app.settings.listen_database_url is None
    asyncio.run(run_daemon(app.settings, app.conninfo, app.session_conninfo, prepare=keeps_session))


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
    import asyncio
    from pathlib import Path

    import psycopg

    from core.embedded import start_embedded_server
    from core.logs import configure_logging
    from listener.demo import demo_log_format, run_demo
    from listener.migrate import migrate as apply_migrations

    settings = app.settings
    configure_logging(settings.log_level, demo_log_format(settings), secrets=settings.secret_values())
    if app.settings.database_url and not database_url:
        _log().info("demo.embedded_database", note="DATABASE_URL is not used by the demo")
    conninfo = database_url or start_embedded_server(Path(app.settings.embedded_data_dir))
    try:
        apply_migrations(conninfo, reference_schema=True)
    except psycopg.Error as exc:
        _log().error("demo.cannot_start", error=str(exc))
        raise SystemExit(1) from None
    asyncio.run(run_demo(app.settings, conninfo, exit_when_done=exit_when_done))


@main.command()
@click.option("--reference-schema", is_flag=True, help="Also create the reference app tables.")
@pass_app
def migrate(app: AppContext, reference_schema: bool) -> None:
    """Apply the worker's migrations (and install its triggers on the app tables)."""
    import psycopg

    from core.redaction import mask_text
    from listener.checks import listen_problem
    from listener.migrate import TRIGGER_TABLES, ContractError
    from listener.migrate import migrate as apply_migrations

    app.configure_logging(sys.stderr)
    # Through the session URL: the migrations are serialised by a session advisory lock, which a
    # transaction pooler would take on one server connection and release on another, leaving it
    # held for good (the next release phase would wait forever). `run`'s test of a session.
    variable = "LISTEN_DATABASE_URL" if app.settings.listen_database_url else "DATABASE_URL"
    if problem := listen_problem(app.session_conninfo, variable):
        click.echo(f"migrate refused: {problem}", err=True)
        raise SystemExit(1)
    try:
        report = apply_migrations(app.session_conninfo, reference_schema=reference_schema)
    except ContractError as exc:
        for problem in exc.problems:
            click.echo(f"migrate refused: {problem}", err=True)
        click.echo("nothing was changed; add the columns, then run `flavor-worker migrate` again", err=True)
        raise SystemExit(1) from None
    except psycopg.Error as exc:
        click.echo(f"migrate failed: {mask_text(str(exc))}", err=True)
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


def _admin() -> Any:
    from listener import admin

    return admin


@events.command("list")
@click.option("--status", type=click.Choice(["pending", "processing", "done", "failed", "expired"]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@pass_app
def events_list(app: AppContext, status: str | None, limit: int) -> None:
    """Newest events first."""
    for row in _admin().list_events(app.conninfo, status, limit):
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
    event = _admin().show_event(app.conninfo, event_id, app.settings)
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
    ids = _admin().retry_events(app.conninfo, None if all_failed else event_id)
    if event_id is not None and not ids:
        click.echo(f"event {event_id} is not failed, expired or done (or does not exist)", err=True)
        raise SystemExit(1)
    click.echo(f"requeued {len(ids)} event(s){': ' + ', '.join(map(str, ids)) if ids else ''}")


@main.command()
@pass_app
def check(app: AppContext) -> None:
    """Preflight: settings, database, schema, data contract, LISTEN/NOTIFY; one line per problem."""
    from listener.checks import run_checks

    report = run_checks(app.settings)
    for line in [*app.variable_warnings(), *report.warnings]:
        click.echo(f"warning: {line}")
    for line in report.problems:
        click.echo(f"problem: {line}")
    if report.problems:
        raise SystemExit(1)
    click.echo(
        "ok: settings valid, database reachable, schema current, data contract met, LISTEN/NOTIFY works"
    )

