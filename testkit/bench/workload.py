"""The booking app's side of the benchmark: plain SQL writes, as the app would make them.

Nothing here calls the worker's code: rows go into the app tables and the triggers do the rest.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from core.embedded import embedded_bin_dir

#: References of benchmark bookings: `BENCH-<run>-<n>`; messages are matched back by them.
REFERENCE = "BENCH-{run}-{n}"

_INSERT_PARTIES = """
INSERT INTO clients (full_name, email, phone) VALUES ('Bench Client', 'client@bench.example', '0400 000 002')
RETURNING id
"""
_INSERT_PERFORMER = """
INSERT INTO performers (stage_name, full_name, email, phone)
VALUES ('DJ Bench', 'Bench Performer', 'performer@bench.example', '+61400000003')
RETURNING id
"""
_BULK_BOOKINGS = """
INSERT INTO bookings (reference, client_id, performer_id, event_type, event_start, venue,
                      total_amount, deposit_amount, status)
SELECT format(%(ref)s, n), %(client)s, %(performer)s, 'Birthday party',
       now() + interval '20 days', 'Bench Hall', 800, 200, %(status)s
FROM generate_series(%(first)s::int, %(last)s::int) AS n
"""
_ONE_BOOKING = """
INSERT INTO bookings (reference, client_id, performer_id, event_type, event_start, venue,
                      total_amount, deposit_amount)
VALUES (%s, %s, %s, 'Birthday party', now() + interval '20 days', 'Bench Hall', 800, 200)
"""
_ONE_OTP = """
INSERT INTO otp_codes (email, code, purpose, expires_at)
VALUES (%s, %s, 'login', now() + interval '10 minutes') RETURNING id
"""


@dataclass
class Parties:
    client_id: str
    performer_id: str


def insert_parties(conn: psycopg.Connection) -> Parties:
    client = conn.execute(_INSERT_PARTIES).fetchone()
    performer = conn.execute(_INSERT_PERFORMER).fetchone()
    assert client and performer
    return Parties(str(client[0]), str(performer[0]))


def insert_bookings(
    conn: psycopg.Connection,
    parties: Parties,
    run: str,
    count: int,
    *,
    silent: bool = False,
    status: str = "pending",
    chunk: int = 2000,
) -> None:
    """`count` bookings in multi-row INSERTs; `silent` uses the documented trigger switch."""
    template = REFERENCE.format(run=run, n="%s")
    for first in range(1, count + 1, chunk):
        with conn.transaction():
            if silent:
                conn.execute("SET LOCAL flavor_worker.silence = 'on'")
            conn.execute(
                _BULK_BOOKINGS,
                {
                    "ref": template,
                    "client": parties.client_id,
                    "performer": parties.performer_id,
                    "status": status,
                    "first": first,
                    "last": min(count, first + chunk - 1),
                },
            )


@dataclass
class SteadyRun:
    """Commit times (epoch seconds) of the rows a steady producer wrote, by their key."""

    committed: dict[str, float] = field(default_factory=dict)
    behind_schedule: int = 0


def produce_bookings(conninfo: str, parties: Parties, run: str, rate: float, seconds: float) -> SteadyRun:
    """One booking per transaction at a steady `rate` per second; the key is the reference."""

    def write(conn: psycopg.Connection, n: int) -> str:
        reference = REFERENCE.format(run=run, n=n)
        conn.execute(_ONE_BOOKING, (reference, parties.client_id, parties.performer_id), prepare=True)
        return reference

    return _steady(conninfo, rate, seconds, write)


def produce_otps(conninfo: str, run: str, rate: float, seconds: float) -> SteadyRun:
    """One OTP row per transaction at a steady rate; the key is the OTP row's id."""

    def write(conn: psycopg.Connection, n: int) -> str:
        row = conn.execute(_ONE_OTP, (f"otp-{run}-{n}@bench.example", f"{n % 1_000_000:06d}"), prepare=True)
        return str(row.fetchone()[0])  # type: ignore[index]

    return _steady(conninfo, rate, seconds, write)


def _steady(conninfo: str, rate: float, seconds: float, write) -> SteadyRun:  # type: ignore[no-untyped-def]
    result = SteadyRun()
    interval = 1.0 / rate
    total = int(rate * seconds)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        start = time.perf_counter()
        for n in range(total):
            due = start + n * interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            elif pause < -interval:
                result.behind_schedule += 1
            key = write(conn, n)
            result.committed[key] = time.time()  # autocommit: the commit has returned
    return result


def pgbench_binary() -> str:
    """pgbench from PATH, else the one shipped in the pgserver wheel."""
    found = shutil.which("pgbench")
    if found:
        return found
    return str(embedded_bin_dir() / "pgbench")


_STATUS_FLIP = """\\set n random(1, {count})
UPDATE bookings SET status = CASE status WHEN 'approved' THEN 'deposit_uploaded' ELSE 'approved' END
WHERE reference = 'BENCH-{run}-' || :n;
"""


def max_rate_status_updates(
    conninfo: str, run: str, bookings: int, seconds: int, clients: int = 2
) -> dict[str, float]:
    """pgbench: single-row status updates through the triggers, as fast as the server takes them."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(_STATUS_FLIP.format(count=bookings, run=run))
    result = subprocess.run(
        [pgbench_binary(), "-n", "-f", script.name, "-c", str(clients), "-j", str(clients),
         "-T", str(seconds), conninfo],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )
    Path(script.name).unlink(missing_ok=True)
    tps = next(
        float(line.split("=")[1].split()[0])
        for line in result.stdout.splitlines()
        if line.startswith("tps")
    )
    transactions = next(
        int(line.split(":")[1].split("/")[0])
        for line in result.stdout.splitlines()
        if "number of transactions actually processed" in line
    )
    return {"tps": tps, "transactions": transactions}


class PendingSampler:
    """Samples the pending backlog once per `interval` in a thread while the writers run."""

    def __init__(self, conninfo: str, interval: float = 0.5) -> None:
        self.conninfo = conninfo
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PendingSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute("SELECT count(*) FROM worker.events WHERE status = 'pending'").fetchone()
                self.samples.append(int(row[0]) if row else 0)
                self._stop.wait(self.interval)
