"""Settings errors are one readable line; logs are JSON and never carry secrets or contacts."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from core.logs import configure_logging
from core.redaction import mask_phone, mask_text
from core.settings import Settings, SettingsError
from tests.processes import REPO


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "listener", *args], cwd=REPO, env=full_env,
        capture_output=True, text=True, timeout=60,
    )


def test_invalid_setting_is_one_line_naming_the_variable_and_exit_2() -> None:
    result = run_cli("check", WORKER_CONCURRENCY="lots", DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: WORKER_CONCURRENCY: Not a valid integer. (got 'lots')"
    ]
    assert "Traceback" not in result.stderr


def test_every_bad_variable_is_reported_at_once() -> None:
    result = run_cli(
        "check", PORT="70000", LOG_LEVEL="LOUD", POLL_INTERVAL_SECONDS="0", SCHEDULER_ENABLED="maybe"
    )
    assert result.returncode == 2
    assert sorted(result.stderr.strip().splitlines()) == [
        "configuration error: LOG_LEVEL: Must be one of: DEBUG, INFO, WARNING, ERROR, CRITICAL. (got 'LOUD')",
        "configuration error: POLL_INTERVAL_SECONDS: Must be greater than 0. (got '0')",
        "configuration error: PORT: Must be greater than or equal to 1 and less than or equal to 65535."
        " (got '70000')",
        "configuration error: SCHEDULER_ENABLED: Not a valid boolean. (got 'maybe')",
    ]


def test_secret_values_are_not_echoed_in_errors() -> None:
    result = run_cli("check", SCHEDULER_TIMEZONE="Mars/Olympus", CRON_SECRET="s3cr3t-value")
    assert result.returncode == 2
    assert "Mars/Olympus" in result.stderr
    assert "s3cr3t-value" not in result.stderr + result.stdout


def settings_read_in(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`load_settings()` in a process started in `folder` (its `.env`), with `env` set."""
    script = (
        "import json; from core.settings import load_settings; s = load_settings();"
        " print(json.dumps([s.worker_concurrency, s.from_email, s.log_level, s.port]))"
    )
    names = ("WORKER_CONCURRENCY", "FROM_EMAIL", "LOG_LEVEL", "PORT")
    base = {k: v for k, v in os.environ.items() if k.upper() not in names}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=folder, env={**base, **env},
        capture_output=True, text=True, timeout=60,
    )


def test_dotenv_file_fills_in_but_never_overrides_the_environment(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WORKER_CONCURRENCY=7\nFROM_EMAIL=dotenv@example.com\n")
    result = settings_read_in(tmp_path, FROM_EMAIL="env@example.com")
    assert json.loads(result.stdout) == [7, "env@example.com", "INFO", None]


def test_names_match_whatever_their_case_and_a_bad_dotenv_value_is_shown(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("log_level=WARNING\nPORT=seventy\nWORKER_CONCURRENCY=3\n")
    refused = settings_read_in(tmp_path, worker_concurrency="7")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "configuration error: PORT: Not a valid integer. (got 'seventy')"
    ]
    dotenv.write_text("log_level=WARNING\nport=8080\nWORKER_CONCURRENCY=3\n")
    # The environment's spelling beats the file's, whatever the case of either.
    result = settings_read_in(tmp_path, worker_concurrency="7")
    assert json.loads(result.stdout) == [7, "bookings@flavorentertainers.com.au", "WARNING", 8080]


def capture_logs(fmt: str = "json") -> io.StringIO:
    stream = io.StringIO()
    configure_logging("DEBUG", fmt, stream)
    return stream


def test_logs_are_json_with_redaction_for_structlog_and_stdlib() -> None:
    stream = capture_logs()
    log = structlog.get_logger("test")
    log.info("delivery.sent", to="whatsapp:+61400000002", email="jane.doe@example.com",
             auth_token="tok_123456", code="493817", booking_id="0b7c2d6e-1111-2222-3333-444455556666")
    logging.getLogger("twilio.http_client").warning("POST to +61400000002 failed for jane.doe@example.com")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    text = stream.getvalue()

    assert lines[0]["event"] == "delivery.sent"
    assert lines[0]["booking_id"] == "0b7c2d6e-1111-2222-3333-444455556666"
    for secret in ("+61400000002", "jane.doe@example.com", "tok_123456", "493817"):
        assert secret not in text
    assert lines[0]["to"] == "+61******002"
    assert lines[1]["level"] == "warning" and "+61******002" in lines[1]["event"]


def test_masking_keeps_ids_and_dates_readable() -> None:
    text = "booking 0b7c2d6e-1111-2222-3333-444455556666 on 2026-11-30 for 0400 000 002"
    assert mask_text(text) == "booking 0b7c2d6e-1111-2222-3333-444455556666 on 2026-11-30 for 0******002"
    assert mask_phone("+61400000002") == "+61******002"


def test_numbers_are_judged_by_their_key_and_bare_international_numbers_masked() -> None:
    stream = capture_logs()
    structlog.get_logger("test").info(
        "otp.sent", code=493817, phone=61400000002, attempts=3, note="to 61400000002 about event 4821"
    )
    line = json.loads(stream.getvalue())
    assert line["code"] == "***"
    assert "61400000002" not in stream.getvalue()
    assert line["attempts"] == 3
    assert line["note"].endswith("about event 4821")


def test_unparseable_json_setting_is_one_line_and_exit_2() -> None:
    result = run_cli("check", WHATSAPP_CONTENT_TEMPLATES="{bad")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: WHATSAPP_CONTENT_TEMPLATES: Not valid JSON. (got '{bad')"
    ]


def test_json_setting_of_the_wrong_shape_is_refused() -> None:
    result = run_cli("check", WHATSAPP_CONTENT_TEMPLATES='["HX123"]')
    assert result.returncode == 2
    assert "WHATSAPP_CONTENT_TEMPLATES: must be a JSON object of strings" in result.stderr


def test_unreachable_database_is_one_line_and_exit_1() -> None:
    result = run_cli("events", "list", DATABASE_URL="postgresql://app:hunter2pw@127.0.0.1:1/app")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("database error: ")
    assert "hunter2pw" not in result.stderr and "Traceback" not in result.stderr


def test_configured_secrets_and_credential_shapes_are_masked_in_any_text() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream, secrets=["sk_live_supersecret", "dbpass-123456"])
    logging.getLogger("aiohttp.client").warning(
        "POST with Authorization: Basic QUN4eHh4OnRvaw== and token=abc123def, "
        "key sk_live_supersecret, dsn host=db password=dbpass-123456"
    )
    text = stream.getvalue()
    for leaked in ("QUN4eHh4OnRvaw==", "abc123def", "sk_live_supersecret", "dbpass-123456"):
        assert leaked not in text
    assert "Authorization: Basic ***" in json.loads(text)["event"]


def test_a_rule_across_settings_is_one_line_without_echoing_any_value() -> None:
    result = run_cli("check", WORKER_RETENTION_DAYS="2", CRON_SECRET="a-cron-secret-value-123")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: WORKER_RETENTION_DAYS (2) must be longer")
    assert "a-cron-secret-value-123" not in result.stderr


def test_a_heartbeat_too_slow_for_the_stale_threshold_is_refused() -> None:
    """A worker pauses its claims once its last heartbeat is half the stale threshold old: two
    heartbeats must fit in that half, or a live worker would pause between beats."""
    with pytest.raises(SettingsError) as refused:
        Settings(heartbeat_seconds=3, stale_after_seconds=10)
    assert "HEARTBEAT_SECONDS (3) must be at most a quarter of STALE_AFTER_SECONDS (10)" in str(refused.value)
    Settings(heartbeat_seconds=2.5, stale_after_seconds=10)  # the limit itself is fine
