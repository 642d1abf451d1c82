"""`flavor-worker demo --exit-when-done`: the zero-configuration walk-through, as a real process."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.processes import REPO

TEMPLATES = (
    "booking_created_admin",
    "deposit_instructions",
    "deposit_uploaded_admin",
    "booking_confirmation",
    "booking_accepted_client",
    "booking_cancelled",
    "otp",
)


def run_demo(*args: str, **env: str) -> str:
    """The demo's stdout (a pipe, not a terminal), once it exited 0 by itself."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "RESEND_", "LOG_"))}
    full_env |= {"SCHEDULER_ENABLED": "false", "POLL_INTERVAL_SECONDS": "0.5", **env}
    done = subprocess.run(
        [sys.executable, "-m", "listener", "demo", "--exit-when-done", *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    return done.stdout


def try_it(out: str) -> tuple[str, str]:
    """The psql command line and the sample statement the readable demo ends with."""
    lines = out.splitlines()
    start = lines.index("Try it: while the daemon runs, open the demo's database")
    psql = lines[start + 1].strip()
    assert lines[start + 2].startswith("and write a row as the booking app does")
    statement = []
    for line in lines[start + 3:]:
        statement.append(line.strip())
        if line.endswith(";"):
            return psql, "\n".join(statement)
    raise AssertionError("no sample statement")


def test_on_a_console_each_message_is_a_block_then_the_ledger_and_how_to_write_more(
    empty_db_url: str,
) -> None:
    out = run_demo("--database-url", empty_db_url, LOG_FORMAT="console")
    lines = out.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("── ")]
    assert len(headers) == 18
    whatsapp = [lines[i] for i in headers if lines[i].startswith("── whatsapp to ")]
    emails = [i for i in headers if lines[i].startswith("── email to ")]
    assert (len(whatsapp), len(emails)) == (13, 5)
    for template in TEMPLATES:
        assert any(lines[i].endswith(f" · {template}") for i in headers)
    # Masked recipients in the headers, a subject under each email's header and only there.
    assert "── whatsapp to client +61******002 · booking_created_client" in whatsapp
    assert all(" a***@example.com · " in lines[i] for i in emails)
    assert [i + 1 for i in emails] == [i for i, line in enumerate(lines) if line.startswith("   Subject: ")]
    assert "   Subject: Booking confirmed: FE-" in out
    # Bodies on real lines, as people read them; nothing of the JSON line's shape left.
    assert "\n   Client: Ann Example\n   Performer: DJ Nova\n" in out
    assert "\n   Reason: Client moved the party interstate\n" in out
    assert "\\n" not in out and "subject=None" not in out and "message.simulated" not in out
    assert max(len(line) for line in lines) < 240  # console log lines; the blocks wrap at 88
    assert max(len(lines[i]) for i in range(headers[0], headers[-1]) if lines[i].startswith("   ")) <= 91
    # The ledger as a table: a header, a rule, a row per delivery.
    start = lines.index("The ledger (worker.deliveries):")
    assert lines[start + 2].split() == ["event", "channel", "role", "recipient", "template", "status"]
    assert set(lines[start + 3].replace(" ", "")) == {"-"}
    rows = [line.split() for line in lines[start + 4 : start + 22]]
    assert all(row[-1] == "simulated" for row in rows)
    admin_row = ["booking.created", "whatsapp", "admin", "+61******000", "booking_created_admin"]
    assert [*admin_row, "simulated"] in rows
    assert "18 deliveries." in out
    # Masked everywhere: no raw phone number, email address or OTP code.
    assert "+61400000002" not in out and "ann@example.com" not in out
    [otp_block] = [i for i in headers if lines[i].endswith(" · otp")]
    block = "\n".join(lines[otp_block : otp_block + 8])
    assert "\n   Your verification code is ******\n" in block
    with psycopg.connect(empty_db_url) as conn:
        [(code,)] = conn.execute("SELECT code FROM otp_codes").fetchall()
    assert code not in block
    psql, statement = try_it(out)
    assert psql.startswith("psql -h ") and " -U " in psql
    assert statement.startswith("INSERT INTO bookings ")


@pytest.mark.skipif(shutil.which("psql") is None, reason="needs the psql client")
def test_the_printed_psql_command_and_statement_make_a_message(empty_db_url: str) -> None:
    """Pasted as printed, they open the demo's database and write a booking: a new event."""
    psql, statement = try_it(run_demo("--database-url", empty_db_url, LOG_FORMAT="console"))
    done = subprocess.run(
        [*shlex.split(psql), "-v", "ON_ERROR_STOP=1", "-c", statement],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(empty_db_url) as conn:
        created = conn.execute("SELECT count(*) FROM worker.events WHERE kind = 'booking.created'").fetchone()
    assert created == (2,)  # the demo's booking and the pasted one


def test_with_json_logs_every_line_is_json(empty_db_url: str) -> None:
    out = run_demo("--database-url", empty_db_url, LOG_FORMAT="json")
    records = [json.loads(line) for line in out.splitlines()]
    simulated = [r for r in records if r["event"] == "message.simulated"]
    assert len(simulated) == 18
    assert {r["template"] for r in simulated} >= set(TEMPLATES)
    assert all(r["to"] != "+61400000002" and "ann@example.com" not in r["to"] for r in simulated)
    assert "Client moved the party interstate" in out
    [finished] = [r for r in records if r["event"] == "demo.finished"]
    assert finished["deliveries"] == 18 and finished["statuses"] == {"simulated": 18}
    assert finished["psql"].startswith("psql -h ") and finished["try_sql"].startswith("INSERT INTO bookings ")


def test_demo_never_touches_the_database_of_database_url(empty_db_url: str, tmp_path: Path) -> None:
    """A developer's DATABASE_URL (say, staging in .env) gets no sample rows and no migrations."""
    data_dir = tmp_path / "demo-pg"
    out = run_demo(DATABASE_URL=empty_db_url, EMBEDDED_DATA_DIR=str(data_dir), LOG_FORMAT="console")
    assert "18 deliveries." in out
    # The embedded server's socket is in its data folder: that is the host psql is given.
    assert try_it(out)[0] == f"psql -h {data_dir.resolve()} -U postgres"
    with psycopg.connect(empty_db_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema IN ('public', 'worker')"
        ).fetchone()
    assert tables == (0,)
