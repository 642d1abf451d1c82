"""`flavor-worker demo --exit-when-done`: the zero-configuration walk-through, as a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

from tests.processes import REPO


def test_demo_prints_every_message_and_exits_when_done(empty_db_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "RESEND_"))}
    env |= {"SCHEDULER_ENABLED": "false", "POLL_INTERVAL_SECONDS": "0.5"}
    done = subprocess.run(
        [sys.executable, "-m", "listener", "demo", "--exit-when-done", "--database-url", empty_db_url],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    out = done.stdout
    assert out.count("message.simulated") == 18
    for template in (
        "booking_created_admin",
        "deposit_instructions",
        "deposit_uploaded_admin",
        "booking_confirmation",
        "booking_accepted_client",
        "booking_cancelled",
        "otp",
    ):
        assert f"template={template}" in out
    assert "18 deliveries." in out
    assert "Client moved the party interstate" in out
    # Masked in the output: no raw phone number, email address or OTP code.
    assert "+61400000002" not in out and "ann@example.com" not in out
    assert "verification code is ******" in out


def test_demo_never_touches_the_database_of_database_url(empty_db_url: str, tmp_path) -> None:
    """A developer's DATABASE_URL (say, staging in .env) gets no sample rows and no migrations."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "RESEND_"))}
    env |= {
        "DATABASE_URL": empty_db_url,
        "EMBEDDED_DATA_DIR": str(tmp_path / "demo-pg"),
        "SCHEDULER_ENABLED": "false",
        "POLL_INTERVAL_SECONDS": "0.5",
    }
    done = subprocess.run(
        [sys.executable, "-m", "listener", "demo", "--exit-when-done"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    assert "18 deliveries." in done.stdout
    with psycopg.connect(empty_db_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema IN ('public', 'worker')"
        ).fetchone()
    assert tables == (0,)
