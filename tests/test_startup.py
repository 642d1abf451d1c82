"""What a user meets first: settings mistakes named at once, a start-up that says what it waits
for, commands on a new database that say what to do, a CLI that answers instantly."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import click
import psycopg
import pytest
from prometheus_client import generate_latest

from core.metrics import METRICS
from core.settings import unknown_variable_warnings
from listener.cli import main
from listener.migrate import discover_migrations
from tests.processes import REPO, free_port


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "listener", *args], cwd=REPO, env={**base, **env},
        capture_output=True, text=True, timeout=60,
    )


# --- settings ---------------------------------------------------------------------------------


def test_variables_close_to_ours_or_under_our_prefixes_get_a_warning() -> None:
    names = ["WORKER_CONCURENCY", "LOG_LEVLE", "TWILIO_SID", "PATH", "TEST_DATABASE_URL", "DATABASE_URL"]
    assert unknown_variable_warnings(names) == [
        "LOG_LEVLE is not a setting: did you mean LOG_LEVEL? (ignored)",
        "TWILIO_SID is not a setting of flavor-worker (ignored)",
        "WORKER_CONCURENCY is not a setting: did you mean WORKER_CONCURRENCY? (ignored)",
    ]


def test_run_warns_of_a_misspelt_variable_at_start(db_url: str, spawn_worker) -> None:
    worker = spawn_worker(db_url, WORKER_CONCURENCY="5")
    warning = worker.wait_for_log("settings.unknown_variable")
    assert warning["warning"] == (
        "WORKER_CONCURENCY is not a setting: did you mean WORKER_CONCURRENCY? (ignored)"
    )
    worker.wait_for_log("worker.started")
    assert worker.terminate() == 0


def test_default_phone_region_must_be_a_region_phonenumbers_knows() -> None:
    result = run_cli("check", DEFAULT_PHONE_REGION="XX")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: DEFAULT_PHONE_REGION: not a region phonenumbers knows"
        " (an ISO 3166 code such as AU, NZ, GB, US) (got 'XX')"
    ]


EVERY_KIND_OF_COMMAND = [["migrate"], ["check"], ["run"], ["events", "list"], ["jobs", "run", "all"]]


@pytest.mark.parametrize("command", EVERY_KIND_OF_COMMAND)
def test_a_malformed_database_url_is_a_masked_configuration_error_in_every_command(
    command: list[str],
) -> None:
    result = run_cli(*command, DATABASE_URL="postgresql//postgres:S3cretPw@127.0.0.1/x")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: DATABASE_URL: not a PostgreSQL URL:"
        " expected postgresql://user:password@host:5432/dbname"
    ]
    assert "S3cretPw" not in result.stdout + result.stderr


def test_every_url_setting_is_checked() -> None:
    result = run_cli(
        "check",
        LISTEN_DATABASE_URL="postgresql//u:pw@db/x",
        RESEND_API_URL="api.resend.example",
        WEBHOOK_BASE_URL="https://w.example.com/?a=1",
    )
    assert result.returncode == 2
    assert sorted(result.stderr.strip().splitlines()) == [
        "configuration error: LISTEN_DATABASE_URL: not a PostgreSQL URL:"
        " expected postgresql://user:password@host:5432/dbname",
        "configuration error: RESEND_API_URL: must be an absolute http(s) URL such as"
        " https://worker.example.com",
        "configuration error: WEBHOOK_BASE_URL: must not have a query or fragment"
        " (Twilio signs the exact URL)",
    ]


# --- start-up ----------------------------------------------------------------------------------


def test_run_says_at_once_that_it_waits_for_the_database_then_gives_up(spawn_worker) -> None:
    port = free_port()  # nothing listens there: connections are refused
    started = time.monotonic()
    worker = spawn_worker(f"postgresql://app:hunter2pw@127.0.0.1:{port}/app", DATABASE_WAIT_SECONDS="6")
    first = worker.wait_for_log("database.waiting", timeout=10)
    assert time.monotonic() - started < 5  # at once, not after a minute of silence
    assert first["target"] == f"127.0.0.1:{port}/app"
    assert first["gives_up_after_s"] == 6 and first["retry_every_s"] > 0
    assert worker.proc.wait(30) == 1
    assert len(worker.events_logged("database.waiting")) == 2  # again every 5 s while it waits
    [refusal] = worker.events_logged("daemon.cannot_start")
    assert refusal["error"].startswith(f"database 127.0.0.1:{port}/app unreachable for 6s")
    assert "hunter2pw" not in worker.log_path.read_text()


@pytest.mark.parametrize(
    "command",
    [["events", "list"], ["events", "show", "1"], ["events", "retry", "--failed"], ["jobs", "run", "all"]],
)
def test_commands_on_an_unmigrated_database_say_to_run_migrate(
    empty_db_url: str, command: list[str]
) -> None:
    result = run_cli(*command, DATABASE_URL=empty_db_url)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    shipped = len(discover_migrations())
    assert line.endswith(f"the database is not migrated ({shipped} of this install's migrations not"
                         " applied): run `flavor-worker migrate` first")


def test_migrate_names_missing_contract_columns_in_words_and_changes_nothing(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bookings (id uuid PRIMARY KEY, status text, created_at timestamptz)")
    result = run_cli("migrate", DATABASE_URL=empty_db_url)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "migrate refused: table bookings lacks columns reference, client_id, performer_id, event_type,"
        " event_start, event_end, venue, timezone, total_amount, deposit_amount, amount_paid,"
        ' deposit_paid_at, cancellation_reason, updated_at (the worker reads them: README "Data contract")',
        "nothing was changed; add the columns, then run `flavor-worker migrate` again",
    ]
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM worker.schema_migrations").fetchone() == (0,)


# --- the CLI itself -----------------------------------------------------------------------------


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_every_help_answers_within_a_quarter_second() -> None:
    """Each command's best of seven runs, taken in rounds over all the commands, so that a busy
    machine's slow moment does not decide for any one of them."""
    paths = _command_paths(main)
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(7):
        for path in paths:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "listener", *path, "--help"], cwd=REPO,
                                  capture_output=True, timeout=30)
            best[path] = min(best[path], time.perf_counter() - started)
            assert done.returncode == 0, done.stderr
    slow = {" ".join(path) or "(main)": round(t, 3) for path, t in best.items() if t >= 0.25}
    assert slow == {}


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "flavor-worker, version 0.1.0"


def test_metrics_have_the_process_series_and_no_created_series() -> None:
    text = generate_latest(METRICS.registry).decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"} <= names
    assert not [name for name in names if name.endswith("_created")]
