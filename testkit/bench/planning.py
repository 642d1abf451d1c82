"""How much of the drain's database time is planning, as EXPLAIN reports it: part of what
server-side prepared statements save (core/db.py says when the work pool prepares; the drain
with and without is in the README's Performance section).
`python -m testkit.bench.planning [ADMIN_CONNINFO]` creates a scratch database, queues one
batch of `booking.created` events, and reads PostgreSQL's own planning and execution times
(EXPLAIN ANALYZE, each statement rolled back) of the three statements every batch runs: the
claim, the batch's message data, the outcomes with four ledger rows per event. Server-side
times, so a busy machine moves them far less than it moves a throughput figure.
"""

from __future__ import annotations

import re
import statistics
import sys
import uuid
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from handlers.contract import DeliveryRecord, Event
from handlers.router import QUERIES as HANDLER_QUERIES
from listener.migrate import migrate
from listener.queries import QUERIES
from listener.worker import Completion, _completion_params
from testkit.bench.workload import insert_bookings, insert_parties

BATCH = 200
RUNS = 30


def _times(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> tuple[float, float]:
    """(planning, execution) milliseconds of `query`, which runs for real: roll it back."""
    plan = "\n".join(row[0] for row in conn.execute("EXPLAIN (ANALYZE, SUMMARY) " + query, params))
    planning, execution = (float(ms) for ms in re.findall(r"(?:Planning|Execution) Time: ([\d.]+) ms", plan))
    return planning, execution


def measure(conninfo: str) -> dict[str, tuple[float, float]]:
    """Median (planning, execution) ms per statement over RUNS batches of BATCH events."""
    claim = {"limit": BATCH, "worker_id": "planning", "suspects": False}
    samples: dict[str, list[tuple[float, float]]] = {"claim_batch": [], "load_event_context": [],
                                                     "complete_events": []}
    with psycopg.connect(conninfo) as conn:
        for _ in range(RUNS):
            with conn.transaction(force_rollback=True):
                samples["claim_batch"].append(_times(conn, QUERIES["claim_batch"], claim))
            with conn.transaction(force_rollback=True):
                events = [Event(*row) for row in conn.execute(QUERIES["claim_batch"], claim)]
                context = {
                    "event_ids": [event.id for event in events],
                    "booking_ids": [uuid.UUID(event.payload["booking_id"]) for event in events],
                    "otp_ids": [None] * len(events),
                    "application_ids": [None] * len(events),
                }
                samples["load_event_context"].append(
                    _times(conn, HANDLER_QUERIES["load_event_context"], context)
                )
                ledger = tuple(DeliveryRecord("whatsapp", f"+6140000000{n}", "simulated") for n in range(4))
                done = [Completion(event, "done", deliveries=ledger) for event in events]
                samples["complete_events"].append(
                    _times(conn, QUERIES["complete_events"], _completion_params(done, "planning"))
                )
    return {
        name: (statistics.median(p for p, _ in runs), statistics.median(e for _, e in runs))
        for name, runs in samples.items()
    }


def main() -> None:
    admin = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"flavor_planning_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        conninfo = make_conninfo(admin, dbname=name)
        migrate(conninfo, reference_schema=True)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            insert_bookings(conn, insert_parties(conn), "planning", BATCH)
        figures = measure(conninfo)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    for statement, (planning, execution) in figures.items():
        print(f"{statement:<20} planning {planning:6.3f} ms   execution {execution:7.3f} ms")
    planning = sum(p for p, _ in figures.values())
    total = planning + sum(e for _, e in figures.values())
    print(f"batch of {BATCH}: planning {planning:.3f} of {total:.3f} ms ({planning / total:.1%}),"
          f" {planning / BATCH * 1000:.1f} us per event")


if __name__ == "__main__":
    main()
