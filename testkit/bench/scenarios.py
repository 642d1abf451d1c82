"""The benchmark's scenarios. Each one gets a fresh database and a fresh worker process.

Figures come from what can be observed outside the worker: the database's own timestamps
(`locked_at`, `finished_at`, the ledger's `sent_at`) and the arrival times the fake provider
records; commit times are taken by the writer right after its autocommit statement returns.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from listener.migrate import migrate
from testkit.bench.processes import DaemonProcess
from testkit.bench.provider import FakeProviderProcess
from testkit.bench.workload import (
    PendingSampler,
    insert_bookings,
    insert_parties,
    max_rate_status_updates,
    produce_bookings,
    produce_otps,
)

#: Worker settings common to every scenario: quiet logs, no scheduler, fast polling.
#: A configured deployment: with no admin address, every booking would also log its unsent
#: admin message (`delivery.failed missing_address`), which is not what a real dyno does.
BASE_ENV = {
    "LOG_LEVEL": "WARNING",
    "SCHEDULER_ENABLED": "false",
    "ADMIN_WHATSAPP": "+61400000000",
    "ADMIN_EMAIL": "admin@flavor.example",
}
#: The fake has no rate limit; the worker's client-side limits must not be what is measured.
UNTHROTTLED = {"TWILIO_RATE_PER_SECOND": "100000", "RESEND_RATE_PER_SECOND": "100000"}


@dataclass(frozen=True)
class Sizes:
    drain_events: int
    sdk_drain_events: int
    steady_rate: float
    steady_seconds: float
    slow_events: int
    writer_bookings: int
    writer_seconds: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(20_000, 5_000, 200, 20, 1_000, 5_000, 15)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(1_000, 300, 100, 2, 100, 500, 3)


class Bench:
    """Owns the server, the scratch folder and the naming of one benchmark run."""

    def __init__(self, admin_conninfo: str, workdir: Path, sizes: Sizes) -> None:
        self.admin = admin_conninfo
        self.workdir = workdir
        self.sizes = sizes
        self.run_id = uuid.uuid4().hex[:6]

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new database with the worker's schema and the reference app schema; dropped after."""
        name = f"flavor_bench_{self.run_id}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        conninfo = psycopg.conninfo.make_conninfo(self.admin, dbname=name)
        try:
            migrate(conninfo, reference_schema=True)
            yield conninfo
        finally:
            with psycopg.connect(self.admin, autocommit=True) as conn:
                conn.execute(
                    psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        psycopg.sql.Identifier(name)
                    )
                )

    @contextmanager
    def worker(self, conninfo: str, env: dict[str, str]) -> Iterator[DaemonProcess]:
        log_path = self.workdir / f"worker-{uuid.uuid4().hex[:6]}.log"
        proc = DaemonProcess(conninfo, log_path, {**BASE_ENV, **env})
        try:
            _wait_registered(conninfo, proc, timeout=60)
            yield proc
        finally:
            proc.close()


def _wait_registered(conninfo: str, proc: DaemonProcess, timeout: float) -> None:
    """The worker is up once it has registered its heartbeat row (whatever its log level)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.proc.returncode}; see {proc.log_path}")
            row = conn.execute("SELECT count(*) FROM worker.workers").fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise TimeoutError(f"worker not registered within {timeout}s; see {proc.log_path}")


def _wait_finished(conninfo: str, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM worker.events WHERE status IN ('done', 'failed', 'expired')"
            ).fetchone()
            if row and row[0] >= total:
                return
            time.sleep(0.05)
    raise TimeoutError(f"{total} events not finished within {timeout}s")


def _drain_window(conninfo: str) -> float:
    """Seconds from the first claim to the last completion, by the database's clock."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(locked_at)) FROM worker.events"
        ).fetchone()
    return float(row[0]) if row and row[0] else float("nan")


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"count": 0}
    ordered = sorted(samples_ms)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "count": len(ordered),
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def _drain(bench: Bench, n: int, env: dict[str, str]) -> tuple[float, float]:
    """Write `n` bookings while no worker runs, then start one and wait until all are handled.

    Returns the drain window in seconds (first claim to last completion) and the worker's RSS
    after the drain.
    """
    with bench.database() as db:
        with psycopg.connect(db, autocommit=True) as conn:
            insert_bookings(conn, insert_parties(conn), bench.run_id, n)
        with bench.worker(db, env) as worker:
            _wait_finished(db, n, timeout=600)
            rss_after = worker.rss_mb()
        return _drain_window(db), rss_after


def drain_null(bench: Bench) -> dict[str, Any]:
    """A backlog of booking.created events, then one worker with the null transport."""
    n = bench.sizes.drain_events
    seconds, rss_after = _drain(bench, n, {"MESSAGE_TRANSPORT": "null"})
    return {
        "events": n,
        "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds, 1),
        "rss_after_drain_mb": round(rss_after, 1),
        "target_events_per_s": 4000,
    }


def drain_sdk(bench: Bench, provider: FakeProviderProcess) -> dict[str, Any]:
    """The same backlog through the real twilio/resend SDKs to the local fake provider."""
    n = bench.sizes.sdk_drain_events
    provider.reset(latency_ms=0)
    seconds, _ = _drain(bench, n, {**provider.worker_env(), **UNTHROTTLED})
    messages = len(provider.arrivals())
    return {
        "events": n,
        "messages": messages,
        "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds, 1),
        "messages_per_s": round(messages / seconds, 1),
    }


def latency_null(bench: Bench) -> dict[str, Any]:
    """Steady bookings; commit -> ledger record of the first message (null transport)."""
    with bench.database() as db:
        with psycopg.connect(db, autocommit=True) as conn:
            parties = insert_parties(conn)
        with bench.worker(db, {"MESSAGE_TRANSPORT": "null"}):
            sizes = bench.sizes
            run = produce_bookings(db, parties, bench.run_id, sizes.steady_rate, sizes.steady_seconds)
            _wait_finished(db, len(run.committed), timeout=120)
        with psycopg.connect(db) as conn:
            rows = conn.execute(
                """SELECT b.reference, extract(epoch FROM min(d.sent_at))
                   FROM bookings b
                   JOIN worker.events e ON e.subject_id = b.id::text AND e.kind = 'booking.created'
                   JOIN worker.deliveries d ON d.event_id = e.id
                   GROUP BY b.reference"""
            ).fetchall()
    samples = [(float(sent) - run.committed[ref]) * 1000 for ref, sent in rows if ref in run.committed]
    return {
        "rate_per_s": bench.sizes.steady_rate,
        "seconds": bench.sizes.steady_seconds,
        **_percentiles(samples),
        "writer_behind_schedule": run.behind_schedule,
        "target_p99_ms": 10,
    }


def latency_sdk(bench: Bench, provider: FakeProviderProcess) -> dict[str, Any]:
    """Steady bookings, then steady OTP rows; commit -> request arriving at the fake provider."""
    provider.reset(latency_ms=0)
    with bench.database() as db:
        with psycopg.connect(db, autocommit=True) as conn:
            parties = insert_parties(conn)
        with bench.worker(db, {**provider.worker_env(), **UNTHROTTLED}):
            bookings = produce_bookings(
                db, parties, bench.run_id, bench.sizes.steady_rate, bench.sizes.steady_seconds
            )
            _wait_finished(db, len(bookings.committed), timeout=120)
            booking_arrivals = provider.first_arrival_by_key(bookings.committed)
            provider.reset(latency_ms=0)
            with psycopg.connect(db) as conn:
                emails_before = conn.execute("SELECT count(*) FROM worker.events").fetchone()[0]
            otps = produce_otps(db, bench.run_id, bench.sizes.steady_rate, bench.sizes.steady_seconds)
            _wait_finished(db, emails_before + len(otps.committed), timeout=120)
            with psycopg.connect(db) as conn:
                emails = dict(
                    conn.execute(
                        "SELECT email, id::text FROM otp_codes WHERE id::text = ANY(%s)",
                        (list(otps.committed),),
                    ).fetchall()
                )
            otp_arrivals = provider.first_arrival_by_key({e: otps.committed[i] for e, i in emails.items()})
    return {
        "rate_per_s": bench.sizes.steady_rate,
        "seconds": bench.sizes.steady_seconds,
        "bookings": {**_percentiles(_latencies(bookings.committed, booking_arrivals)), "target_p99_ms": 25},
        "otp_email": {
            **_percentiles(_latencies({e: otps.committed[i] for e, i in emails.items()}, otp_arrivals)),
            "target_p99_ms": 25,
        },
    }


def _latencies(committed: dict[str, float], arrivals: dict[str, float]) -> list[float]:
    return [(arrivals[key] - at) * 1000 for key, at in committed.items() if key in arrivals]


def slow_provider(bench: Bench, provider: FakeProviderProcess, concurrency: int) -> dict[str, Any]:
    """Every provider request answered after 150 ms: messages/s at the default concurrency."""
    n = bench.sizes.slow_events
    provider.reset(latency_ms=150)
    seconds, _ = _drain(bench, n, {**provider.worker_env(), **UNTHROTTLED})
    messages = len(provider.arrivals())
    provider.reset(latency_ms=0)
    return {
        "provider_latency_ms": 150,
        "concurrency": concurrency,
        "events": n,
        "messages": messages,
        "messages_per_s": round(messages / seconds, 1),
        "target_messages_per_s": round(0.8 * concurrency / 0.15, 1),
        # WORKER_CONCURRENCY bounds events, each sending its 4 messages at once: the same
        # target read per event, the stricter of the two readings.
        "events_per_s": round(n / seconds, 1),
        "target_events_per_s": round(0.8 * concurrency / 0.15, 1),
    }


def memory(bench: Bench, provider: FakeProviderProcess) -> dict[str, Any]:
    """Resident memory of an idle worker, one quiet second after start-up: as a dyno runs it
    (scheduler on, Twilio and Resend SDKs loaded), and with console/null transports only."""
    figures: dict[str, Any] = {}
    with bench.database() as db:
        for name, env in (
            ("idle_rss_sdk_mb", {**provider.worker_env(), "SCHEDULER_ENABLED": "true"}),
            ("idle_rss_null_mb", {"MESSAGE_TRANSPORT": "null", "SCHEDULER_ENABLED": "true"}),
        ):
            with bench.worker(db, env) as worker:
                time.sleep(1.0)
                figures[name] = round(worker.rss_mb(), 1)
    return {**figures, "target_idle_rss_mb": 70}


def writers_at_max_rate(bench: Bench) -> dict[str, Any]:
    """pgbench-style status updates as fast as the server takes them; does the backlog grow?"""
    sizes = bench.sizes
    with bench.database() as db:
        with psycopg.connect(db, autocommit=True) as conn:
            insert_bookings(conn, insert_parties(conn), bench.run_id, sizes.writer_bookings,
                            silent=True, status="approved")
        with bench.worker(db, {"MESSAGE_TRANSPORT": "null"}), PendingSampler(db) as sampler:
            load = max_rate_status_updates(db, bench.run_id, sizes.writer_bookings, sizes.writer_seconds)
            writers_end, during = time.monotonic(), list(sampler.samples)
            _wait_finished(db, load["transactions"], timeout=300)
            caught_up = time.monotonic() - writers_end
        seconds = _drain_window(db)
    return {
        "writer_tps": round(load["tps"], 1),
        "events": load["transactions"],
        "worker_events_per_s": round(load["transactions"] / seconds, 1),
        "backlog_samples": len(during),
        "backlog_max": max(during, default=0),
        "backlog_at_writers_end": during[-1] if during else 0,
        "caught_up_after_writers_s": round(caught_up, 2),
    }
