"""The `flavor-worker bench` command: run the scenarios, print a table or one JSON object."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

SCENARIOS = ("drain", "latency", "slow", "memory", "writers")


def machine_info(conninfo: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(conninfo) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "postgres": version[0] if version else "?",
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@click.command()
@click.option("--quick", is_flag=True, help="Small sizes: seconds, for a CI smoke run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--only", multiple=True, type=click.Choice(SCENARIOS), help="Run only these scenarios.")
@click.option(
    "--repeat", default=1, show_default=True, type=click.IntRange(min=1),
    help="Run each scenario this many times; report each figure's median and range.",
)
def bench(quick: bool, as_json: bool, only: tuple[str, ...], repeat: int) -> None:
    """Measure drain rate, commit-to-provider latency, slow-provider throughput, memory, headroom."""
    # Imported here: `flavor-worker bench --help` must not load the driver, aiohttp and the rest.
    from core.embedded import start_embedded_server
    from core.logs import configure_logging
    from core.settings import load_settings
    from testkit.bench import scenarios
    from testkit.bench.provider import FakeProviderProcess

    settings = load_settings()
    configure_logging("WARNING", "console", sys.stderr)
    admin = settings.bench_database_url or start_embedded_server(Path(".data/bench-postgres"))
    sizes = scenarios.Sizes.quick() if quick else scenarios.Sizes.full()
    chosen = set(only or SCENARIOS)
    results: dict[str, Any] = {"machine": machine_info(admin), "quick": quick, "repeat": repeat}
    ranges: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="flavor-bench-") as workdir:
        bench_run = scenarios.Bench(admin, Path(workdir), sizes)
        with FakeProviderProcess(Path(workdir)) as provider:
            plan: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
                ("drain", "drain_null", lambda: scenarios.drain_null(bench_run)),
                ("drain", "drain_sdk", lambda: scenarios.drain_sdk(bench_run, provider)),
                ("latency", "latency_null", lambda: scenarios.latency_null(bench_run)),
                ("latency", "latency_sdk", lambda: scenarios.latency_sdk(bench_run, provider)),
                ("slow", "slow_provider",
                 lambda: scenarios.slow_provider(bench_run, provider, settings.worker_concurrency)),
                ("memory", "memory", lambda: scenarios.memory(bench_run, provider)),
                ("writers", "writers_max_rate", lambda: scenarios.writers_at_max_rate(bench_run)),
            ]
            for group, name, run in plan:
                if group in chosen:
                    runs = []
                    for number in range(1, repeat + 1):
                        click.echo(f"running {name} ({number}/{repeat}) ...", err=True)
                        runs.append(run())
                    results[name] = median_figures(runs)
                    if spread := figure_ranges(runs):
                        ranges[name] = spread
    if ranges:
        results["ranges"] = ranges
    click.echo(json.dumps(results, indent=2) if as_json else render_table(results))


def _figures(values: list[Any]) -> list[float] | None:
    """The values as numbers when every run gave one (NaN, a run that measured nothing, left
    out); None when they are not all numbers."""
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    return [v for v in values if not math.isnan(v)] or None


def _per_key(runs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Each key of any run, with the values of the runs that have it (runs can differ: a
    latency scenario with no samples reports only its count)."""
    keys = dict.fromkeys(key for run in runs for key in run)
    return {key: [run[key] for run in runs if key in run] for key in keys}


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's figures over several runs: each number's median (a noisy machine's one
    bad or lucky run moves no figure); anything else as the first run gave it."""
    combined: dict[str, Any] = {}
    for key, values in _per_key(runs).items():
        numbers = _figures(values)
        if all(isinstance(value, dict) for value in values):
            combined[key] = median_figures(values)
        elif numbers and min(numbers) != max(numbers):
            combined[key] = round(statistics.median(numbers), 2)
        else:
            combined[key] = numbers[0] if numbers else values[0]
    return combined


def figure_ranges(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest and highest value of every number that varied between the runs."""
    spread: dict[str, Any] = {}
    for key, values in _per_key(runs).items():
        numbers = _figures(values)
        if all(isinstance(value, dict) for value in values):
            if inner := figure_ranges(values):
                spread[key] = inner
        elif numbers and min(numbers) != max(numbers):
            spread[key] = [min(numbers), max(numbers)]
    return spread


def render_table(results: dict[str, Any]) -> str:
    """A plain table: scenario, figure, value and target where one applies."""
    m = results["machine"]
    repeat = results["repeat"]
    lines = [
        f"machine: {m['cores']} cores ({m['cpu']}), PostgreSQL {m['postgres']}, Python {m['python']}"
        + ("  [quick sizes]" if results["quick"] else "")
        + (f"  [median of {repeat} runs]" if repeat > 1 else ""),
        "",
        f"{'scenario':<18} {'figure':<28} {'value':>12} {'target':>12}"
        + ("  range" if repeat > 1 else ""),
        "-" * (96 if repeat > 1 else 74),
    ]
    ranges = dict(_flatten(results.get("ranges", {})))
    for name, figures in results.items():
        if not isinstance(figures, dict) or name in ("machine", "ranges"):
            continue
        for key, value in _flatten(figures):
            if "target" in key:
                continue
            target = _target_for(figures, key)
            line = f"{name:<18} {key:<28} {value!s:>12} {target:>12}"
            low_high = ranges.get(f"{name}.{key}")
            if low_high:
                line += f"  {low_high[0]} .. {low_high[1]}"
            lines.append(line.rstrip())
    return "\n".join(lines)


def _flatten(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    flat: list[tuple[str, Any]] = []
    for key, value in figures.items():
        if isinstance(value, dict):
            flat.extend(_flatten(value, f"{prefix}{key}."))
        else:
            flat.append((f"{prefix}{key}", value))
    return flat


def _target_for(figures: dict[str, Any], key: str) -> str:
    section, _, leaf = key.rpartition(".")
    scope = figures.get(section, figures) if section else figures
    candidates = {
        "events_per_s": ("target_events_per_s", ">="),
        "messages_per_s": ("target_messages_per_s", ">="),
        "p99_ms": ("target_p99_ms", "<="),
    }
    if leaf.startswith("idle_rss") and "target_idle_rss_mb" in scope:
        return f"<= {scope['target_idle_rss_mb']}"
    if leaf in candidates and candidates[leaf][0] in scope:
        target_key, sign = candidates[leaf]
        return f"{sign} {scope[target_key]}"
    return ""
