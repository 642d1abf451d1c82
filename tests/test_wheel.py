"""The wheel is the product: built from this checkout, installed (not editable) in a clean venv
with the runtime dependencies only, and used from another directory, as a Dockerfile or a
buildpack would. Slow (a venv and its dependencies, from pip's cache), so under the `slow` mark,
which `.ci/run` runs (`make test-slow`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.appdata import add_bookings, status_counts
from tests.processes import REPO
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def _run(*command: str | Path, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_alone_migrates_checks_handles_an_event_and_runs_the_demo(
    tmp_path: Path, empty_db_url: str
) -> None:
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing can be read from it by accident
    elsewhere.mkdir()
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path))}
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path / "dist", REPO,
         cwd=elsewhere, env=base)
    [wheel] = (tmp_path / "dist").glob("flavor_worker-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=elsewhere, env=base)
    _run(venv / "bin" / "pip", "install", "--quiet", wheel, cwd=elsewhere, env=base)
    worker = str(venv / "bin" / "flavor-worker")
    env = {**base, "LOG_FORMAT": "json", "SCHEDULER_ENABLED": "false", "POLL_INTERVAL_SECONDS": "0.5"}

    # Without DATABASE_URL and without the embedded extra: one line saying what to do.
    alone = subprocess.run([worker, "run"], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=60)
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines() == [
        "configuration error: DATABASE_URL is not set and the embedded PostgreSQL is not installed:"
        " set DATABASE_URL, or install it with `pip install 'flavor-worker[embedded]'`"
    ]

    env["DATABASE_URL"] = empty_db_url
    migrated = _run(worker, "migrate", "--reference-schema", cwd=elsewhere, env=env)
    assert "006_claim_function.sql" in migrated and "event triggers installed on: bookings" in migrated
    checked = _run(worker, "check", cwd=elsewhere, env=env)
    assert checked.splitlines()[-1].startswith("ok:"), checked

    # One real event, through the installed daemon (console transports: recorded as simulated).
    with (tmp_path / "run.log").open("wb") as log:
        daemon = subprocess.Popen([worker, "run"], cwd=elsewhere, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        with psycopg.connect(empty_db_url, autocommit=True) as db:
            add_bookings(db, 1)
            wait_until(lambda: status_counts(db) == {"done": 1}, timeout=60, message="the event done")
            simulated = db.execute(
                "SELECT count(*) FROM worker.deliveries WHERE status = 'simulated'"
            ).fetchone()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert simulated == (3,)  # client WhatsApp and email, performer WhatsApp (no ADMIN_WHATSAPP set)

    # The demo, with the embedded extra.
    _run(venv / "bin" / "pip", "install", "--quiet", f"{wheel}[embedded]", cwd=elsewhere, env=base)
    demo_env = {**env, "EMBEDDED_DATA_DIR": str(tmp_path / "demo-pg")}
    del demo_env["DATABASE_URL"]
    demo = _run(worker, "demo", "--exit-when-done", cwd=elsewhere, env=demo_env, timeout=180)
    # Piped, the demo speaks JSON (LOG_FORMAT's default): its last word is the ledger's count.
    [finished] = [json.loads(line) for line in demo.splitlines() if '"demo.finished"' in line]
    assert finished["deliveries"] == 18 and finished["statuses"] == {"simulated": 18}
