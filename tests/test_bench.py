"""The benchmark command works end to end (a smoke run: the figures are not asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from testkit.bench.cli import figure_ranges, median_figures
from tests.processes import REPO


def test_bench_quick_runs_every_scenario_and_prints_one_json_object(pg_admin: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "RESEND_", "DATABASE_URL"))}
    env["BENCH_DATABASE_URL"] = pg_admin
    result = subprocess.run(
        [sys.executable, "-m", "listener", "bench", "--quick", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["quick"] is True
    assert figures["drain_null"]["events"] == 1000 and figures["drain_null"]["events_per_s"] > 0
    assert figures["drain_sdk"]["messages"] == 4 * figures["drain_sdk"]["events"]
    assert figures["latency_null"]["count"] > 0
    assert figures["latency_sdk"]["bookings"]["count"] > 0
    assert figures["latency_sdk"]["otp_email"]["count"] > 0
    assert figures["slow_provider"]["messages_per_s"] > 0
    assert figures["memory"]["idle_rss_sdk_mb"] > figures["memory"]["idle_rss_null_mb"] > 0
    assert figures["writers_max_rate"]["events"] > 0


def test_bench_table_names_the_machine(pg_admin: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "RESEND_", "DATABASE_URL"))}
    env["BENCH_DATABASE_URL"] = pg_admin
    result = subprocess.run(
        [sys.executable, "-m", "listener", "bench", "--quick", "--only", "drain"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("machine: ")
    assert "drain_null" in result.stdout and "events_per_s" in result.stdout


def test_repeated_runs_report_each_figures_median_and_range() -> None:
    runs = [
        {"events": 100, "events_per_s": 3900.0, "sdk": {"p99_ms": 30.0}, "target_p99_ms": 25, "ok": True},
        {"events": 100, "events_per_s": 4200.0, "sdk": {"p99_ms": 12.0}, "target_p99_ms": 25, "ok": True},
        {"events": 100, "events_per_s": 4100.0, "sdk": {"p99_ms": 14.0}, "target_p99_ms": 25, "ok": True},
    ]
    assert median_figures(runs) == {
        "events": 100, "events_per_s": 4100.0, "sdk": {"p99_ms": 14.0}, "target_p99_ms": 25, "ok": True
    }
    assert figure_ranges(runs) == {"events_per_s": [3900.0, 4200.0], "sdk": {"p99_ms": [12.0, 30.0]}}
    assert median_figures(runs[:1]) == runs[0] and figure_ranges(runs[:1]) == {}


def test_repeated_runs_of_different_shapes_or_with_nan_are_combined() -> None:
    runs = [
        {"count": 0},  # a run that got no samples reports only its count
        {"count": 10, "p99_ms": 12.0, "seconds": float("nan")},
        {"count": 12, "p99_ms": 14.0, "seconds": 2.0},
    ]
    assert median_figures(runs) == {"count": 10, "p99_ms": 13.0, "seconds": 2.0}
    assert figure_ranges(runs) == {"count": [0, 12], "p99_ms": [12.0, 14.0]}


def test_bench_without_the_test_kit_says_how_to_install_it() -> None:
    # As on a dyno: the test kit is a distribution apart, and absent there (None in sys.modules
    # makes `import testkit` fail exactly as an uninstalled package does).
    script = "import sys; sys.modules['testkit'] = None; from listener.cli import main; main(['bench'])"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "test kit" in result.stderr and "pip install -e ./testkit" in result.stderr
    assert "Traceback" not in result.stderr
