"""`flavor-worker console`: the console served alone, closed without a password, and the
password-hash helper whose output opens it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from click.testing import CliRunner

from core.settings import Settings
from listener.cli import main as cli
from listener.http.console.auth import ConsoleAuth
from tests.waiting import wait_until


def _env(db_url: str, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CONSOLE_", "DATABASE_URL"))}
    return {**keep, "DATABASE_URL": db_url, "LOG_FORMAT": "json", **extra}


def test_console_command_serves_the_console_until_sigterm(db_url: str, tmp_path: Path) -> None:
    log_path = tmp_path / "console.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "listener", "console", "--port", "0"],
            env=_env(db_url, CONSOLE_PASSWORD="local-console-pw"),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,  # no .env of the checkout
        )
    try:

        def serving_url() -> str | None:
            for line in log_path.read_text().splitlines():
                if '"console.serving"' in line:
                    return json.loads(line)["url"]
            return None

        url = wait_until(serving_url, timeout=20, message="console.serving in the log")
        answer = httpx.get(url + "login")
        assert answer.status_code == 200 and "Password" in answer.text
        assert httpx.get(url, follow_redirects=False).status_code == 303  # not signed in
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "local-console-pw" not in log_path.read_text()


def test_console_command_refuses_to_start_closed(db_url: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "listener", "console", "--port", "0"],
        env=_env(db_url),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "CONSOLE_PASSWORD" in done.stderr


def test_hash_password_prints_a_hash_that_opens_the_console() -> None:
    result = CliRunner().invoke(cli, ["console", "--hash-password"], input="s3cret-phrase\ns3cret-phrase\n")
    assert result.exit_code == 0, result.output
    value = result.output.strip().splitlines()[-1]
    assert value.startswith("scrypt$") and "s3cret-phrase" not in value
    auth = ConsoleAuth(Settings(console_password_hash=value))
    assert auth.password_ok("s3cret-phrase") and not auth.password_ok("s3cret-phrasE")
