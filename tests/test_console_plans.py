"""The console stays fast on a big ledger: every page's query is served by indexes, never by a
sequential scan of worker.events or worker.deliveries, and (at full size) every page answers in
under 100 ms.

The ledger is generated with generate_series, then ANALYZEd, so the planner decides with real
statistics. In `make test` it has 50,000 events and 150,000 deliveries (a few seconds): large
enough that a sequential scan is never the planner's cheapest choice for a selective page, so a
missing or unusable index shows up as one. `make test-slow` (.ci/run) builds the full
1,000,000 events and 3,000,000 deliveries and also times every page through the app.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg
import pytest

from listener.http.console.store import QUERIES, RETRY_LIMIT, SCAN_LIMIT
from tests.consoleharness import PASSWORD, signed_in_csrf
from tests.httpapp import live_surface

KINDS = ["booking.created", "booking.approved", "booking.deposit_verified", "booking.cancelled",
         "booking.reminder_due", "otp.created"]  # fmt: skip
LEDGER_TABLES = {"events", "deliveries"}
PAGE_BUDGET_MS = 100.0


def generate(conn: psycopg.Connection, events: int) -> None:
    """`events` events over 14 days (five per booking), three deliveries each; 1 % of events
    failed, a few pending or processing; 2 % of deliveries failed, 1 % skipped."""
    with conn.transaction():
        conn.execute("SET LOCAL flavor_worker.silence = 'on'")
        conn.execute(
            "INSERT INTO clients (id, full_name, email, phone)"
            " VALUES ('00000000-0000-0000-0000-00000000000c', 'Casey Client', 'casey@example.com',"
            "         '0400000009')"
        )
        conn.execute(
            "INSERT INTO performers (id, stage_name, email, phone)"
            " VALUES ('00000000-0000-0000-0000-00000000000e', 'DJ Nova', 'nova@example.com', '0400000003')"
        )
        conn.execute(
            "INSERT INTO bookings (id, reference, client_id, performer_id, event_start)"
            " SELECT md5('b' || g)::uuid, 'FE-' || g, '00000000-0000-0000-0000-00000000000c',"
            "        '00000000-0000-0000-0000-00000000000e', now() + interval '10 days'"
            " FROM generate_series(1, %s) g",
            (events // 5 + 1,),
        )
    conn.execute(
        "INSERT INTO worker.events (kind, subject_id, payload, status, attempts, run_at, created_at,"
        "                           updated_at, finished_at, locked_at)"
        " SELECT (%(kinds)s::text[])[1 + g %% 6], md5('b' || (1 + g / 5))::uuid::text,"
        "        jsonb_build_object('booking_id', md5('b' || (1 + g / 5))::uuid), s.status, 1, t.at, t.at,"
        "        t.at, CASE WHEN s.status IN ('done', 'failed') THEN t.at END, t.at"
        " FROM generate_series(1, %(n)s) g"
        " CROSS JOIN LATERAL (SELECT now() - interval '14 days' * (1 - g::float8 / %(n)s) AS at) t"
        " CROSS JOIN LATERAL (SELECT CASE WHEN g %% 100 = 0 THEN 'failed' WHEN g %% 200 = 1 THEN 'pending'"
        "                                 WHEN g %% 1000 = 2 THEN 'processing' ELSE 'done' END AS status) s",
        {"kinds": KINDS, "n": events},
    )
    conn.execute(
        "INSERT INTO worker.deliveries (event_id, channel, recipient, recipient_role, template, status,"
        "                               provider_message_id, error_code, error_message, created_at,"
        "                               updated_at, sent_at)"
        " SELECT e.id, c.channel,"
        "        CASE c.channel WHEN 'email' THEN 'user' || e.id %% 40000 || '@example.com'"
        "                       WHEN 'whatsapp' THEN '+614' || lpad((e.id %% 40000)::text, 8, '0')"
        "                       ELSE 'client:' || e.subject_id END,"
        "        'client', 'booking_received', s.status,"
        "        CASE WHEN s.status = 'sent' THEN 'SM' || md5(e.id || c.channel) END,"
        "        CASE s.status WHEN 'failed' THEN (ARRAY['21211', '63016', '63003'])[1 + e.id %% 3]"
        "                      WHEN 'skipped' THEN 'opted_out' END,"
        "        CASE WHEN s.status <> 'sent' THEN 'generated' END,"
        "        e.created_at + interval '1 second', e.created_at + interval '1 second',"
        "        CASE WHEN s.status = 'sent' THEN e.created_at + interval '1 second' END"
        " FROM worker.events e"
        " CROSS JOIN (VALUES (0, 'whatsapp'), (1, 'email'), (2, 'in_app')) c(k, channel)"
        " CROSS JOIN LATERAL (SELECT CASE WHEN (e.id * 3 + c.k) %% 50 = 0 THEN 'failed'"
        "                                 WHEN (e.id * 3 + c.k) %% 97 = 0 THEN 'skipped'"
        "                                 ELSE 'sent' END AS status) s",
        {},
    )
    conn.execute("VACUUM ANALYZE worker.events, worker.deliveries, bookings")


def page_queries(conn: psycopg.Connection) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each page's statements with the parameters a page would bind, by a readable label."""
    failed_event = conn.execute(
        "SELECT event_id FROM worker.deliveries WHERE status = 'failed' ORDER BY id DESC LIMIT 1"
    ).fetchone()[0]
    cursor_row = conn.execute(
        "SELECT created_at, id FROM worker.deliveries WHERE status = 'failed' ORDER BY id LIMIT 1 OFFSET 200"
    ).fetchone()
    day_ago = conn.execute("SELECT now() - interval '1 day'").fetchone()[0]
    no_filter = {"kind": None, "channel": None, "reason": None, "since": "-infinity", "until": "infinity",
                 "failed_only": False, "before_at": "infinity", "before_id": 0, "limit": 50,
                 "scan_limit": SCAN_LIMIT}  # fmt: skip
    problems = {
        "failures": no_filter,
        "failures, next page": no_filter | {"before_at": cursor_row[0], "before_id": cursor_row[1]},
        "failures of a kind, channel and reason": no_filter
        | {"kind": "booking.cancelled", "channel": "whatsapp", "reason": "63016"},
        "failures in the last day": no_filter | {"since": day_ago},
        "failures of a filter to retry": no_filter
        | {"channel": "email", "failed_only": True, "limit": RETRY_LIMIT},
    }
    queries: dict[str, tuple[str, dict[str, Any]]] = {
        label: (QUERIES["problems"], params) for label, params in problems.items()
    }
    queries["failures: where the walk stopped"] = (QUERIES["problems_frontier"], no_filter)
    queries |= {
        "overview: events per kind": (QUERIES["event_counts"], {}),
        "overview: channels": (QUERIES["channel_problems"], {}),
        "overview: latest failed events": (QUERIES["recent_failed_events"], {}),
        "overview: oldest pending": (QUERIES["oldest_pending"], {}),
        "overview: jobs": (QUERIES["last_job_runs"], {}),
        "find: booking": (QUERIES["events_of_booking"], {"reference": "FE-777"}),
        "find: event id": (QUERIES["event_exists"], {"id": failed_event}),
        "find: recipient": (
            QUERIES["deliveries_to"],
            {"recipient": "+61400000777", "before_id": 2**63 - 1, "limit": 50},
        ),
        "find: recipient, next page": (QUERIES["recipient_of"], {"id": failed_event * 3}),
        "timeline: event": (QUERIES["event"], {"id": failed_event}),
        "timeline: deliveries": (QUERIES["event_deliveries"], {"id": failed_event}),
    }
    return queries


def scanned(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """(node type, relation) of every node of a JSON plan."""
    found = [(plan["Node Type"], plan.get("Relation Name", ""))]
    for child in plan.get("Plans", []):
        found += scanned(child)
    return found


@pytest.mark.parametrize(
    "events",
    [pytest.param(50_000, id="50k-events"), pytest.param(1_000_000, id="1M-events", marks=pytest.mark.slow)],
)
async def test_every_page_is_served_by_indexes_and_fast(
    db: psycopg.Connection, db_url: str, events: int
) -> None:
    started = time.perf_counter()
    generate(db, events)
    print(f"\ngenerated {events} events, {3 * events} deliveries in {time.perf_counter() - started:.1f} s")
    failures = []
    for label, (sql, params) in page_queries(db).items():
        plan = db.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params).fetchone()[0][0]
        nodes = scanned(plan["Plan"])
        print(f"{label:45} {plan['Execution Time']:8.2f} ms  {sorted({n for n, r in nodes if r})}")
        if any(node == "Seq Scan" and relation in LEDGER_TABLES for node, relation in nodes):
            failures.append(f"{label}: {nodes}")
    assert not failures, "sequential scan of the ledger:\n" + "\n".join(failures)

    timings = await _page_timings(db, db_url)
    for path, times in timings.items():
        print(f"GET {path:55} median {statistics.median(times):6.1f} ms  max {max(times):6.1f} ms")
    if events >= 1_000_000:  # a budget for full size; the small ledger only shows its numbers
        slow = {path: statistics.median(t) for path, t in timings.items()
                if statistics.median(t) > PAGE_BUDGET_MS}  # fmt: skip
        assert not slow, f"pages over {PAGE_BUDGET_MS} ms: {slow}"


async def _page_timings(db: psycopg.Connection, db_url: str) -> dict[str, list[float]]:
    """Each page through the app (in process, over a real pool), five times, in milliseconds."""
    event_id = db.execute(
        "SELECT event_id FROM worker.deliveries WHERE status = 'failed' ORDER BY id DESC LIMIT 1"
    ).fetchone()[0]
    paths = ["/console/", "/console/overview/live", "/console/failures",
             "/console/failures?kind=booking.cancelled&channel=whatsapp&reason=63016",
             "/console/find?q=FE-777", f"/console/find?q={event_id}", "/console/find?q=%2B61400000777",
             "/console/find?q=user777%40example.com", f"/console/events/{event_id}",
             f"/console/events/{event_id}/live", "/console/retry?channel=email"]  # fmt: skip
    timings: dict[str, list[float]] = {}
    async with live_surface(db_url, console_password=PASSWORD) as live:
        await signed_in_csrf(live.client)
        for path in paths:
            timings[path] = []
            for _ in range(5):
                started = time.perf_counter()
                answer = await live.client.get(path)
                timings[path].append((time.perf_counter() - started) * 1000)
                assert answer.status_code in (200, 303), (path, answer.status_code)
    return timings
