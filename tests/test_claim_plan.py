"""The claim's cost follows its batch, not the backlog, whatever the queue's statistics say."""

from __future__ import annotations

import psycopg

from listener.queries import QUERIES

BACKLOG = 20_000


def test_a_claim_reads_the_head_of_the_backlog_not_all_of_it(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Never analyzed, as on a fresh deployment: the planner has to guess the pending count.
        conn.execute("ALTER TABLE worker.events SET (autovacuum_enabled = off)")
        conn.execute(
            "INSERT INTO worker.events (kind, subject_id)"
            " SELECT 'booking.created', 'booking-' || g FROM generate_series(1, %s) g",
            [BACKLOG],
        )
        with conn.transaction(force_rollback=True):
            claimed = conn.execute(
                QUERIES["claim_batch"], {"worker_id": "w1", "limit": 10, "suspects": False, "urgent": False}
            ).fetchall()
            [[rows_read]] = conn.execute(
                "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)"
                " FROM pg_stat_xact_user_tables WHERE relid = 'worker.events'::regclass"
            ).fetchall()
        oldest = conn.execute("SELECT id FROM worker.events ORDER BY id LIMIT 10").fetchall()
    assert [row[0] for row in claimed] == [row[0] for row in oldest]
    # The index walk reads about three rows per claimed event; collecting the backlog, all of it.
    assert rows_read < 200, f"the claim read {rows_read} rows of a {BACKLOG}-event backlog"
