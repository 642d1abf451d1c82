"""The claim's cost follows its batch, not the backlog, whatever the queue's statistics say,
and its kept plans (sql/012) claim what the previous version's claim did."""

from __future__ import annotations

import itertools

import psycopg
import pytest

from listener.queries import QUERIES

BACKLOG = 20_000


@pytest.mark.parametrize("plan_mode", ["auto", "force_generic_plan"])
def test_a_claim_reads_the_head_of_the_backlog_not_all_of_it(db_url: str, plan_mode: str) -> None:
    """Also with the generic plan a connection keeps for the function's statements."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Never analyzed, as on a fresh deployment: the planner has to guess the pending count.
        conn.execute("ALTER TABLE worker.events SET (autovacuum_enabled = off)")
        conn.execute(
            "INSERT INTO worker.events (kind, subject_id)"
            " SELECT 'booking.created', 'booking-' || g FROM generate_series(1, %s) g",
            [BACKLOG],
        )
        conn.execute(f"SET plan_cache_mode = {plan_mode}")
        params = {"worker_id": "w1", "limit": 10, "suspects": False, "urgent": False}
        for _ in range(7):  # past the custom plans PostgreSQL makes before it may keep one
            with conn.transaction(force_rollback=True):
                conn.execute(QUERIES["claim_batch"], params).fetchall()
        with conn.transaction(force_rollback=True):
            claimed = conn.execute(QUERIES["claim_batch"], params).fetchall()
            [[rows_read]] = conn.execute(
                "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)"
                " FROM pg_stat_xact_user_tables WHERE relid = 'worker.events'::regclass"
            ).fetchall()
        oldest = conn.execute("SELECT id FROM worker.events ORDER BY id LIMIT 10").fetchall()
    assert [row[0] for row in claimed] == [row[0] for row in oldest]
    # The index walk reads about three rows per claimed event; collecting the backlog, all of it.
    assert rows_read < 200, f"the claim read {rows_read} rows of a {BACKLOG}-event backlog"


def _mixed_queue(conn: psycopg.Connection) -> None:
    """Login codes among bookings, subjects with several open events, events not yet due,
    events already claimed, and suspects in groups of different sizes."""
    conn.execute(
        """INSERT INTO worker.events (kind, subject_id, status, run_at, suspect_group, crashes)
           SELECT CASE WHEN g % 7 = 0 THEN 'otp.created' ELSE 'booking.created' END,
                  'subject-' || (g % 23),
                  CASE WHEN g % 11 = 0 THEN 'processing' WHEN g % 13 = 0 THEN 'done' ELSE 'pending' END,
                  now() + CASE WHEN g % 17 = 0 THEN interval '1 hour' ELSE interval '0' END,
                  CASE WHEN g % 5 = 0 THEN 4 - (g / 5) % 4 END,
                  CASE WHEN g % 5 = 0 THEN 1 ELSE 0 END
           FROM generate_series(1, 400) g"""
    )


def test_the_kept_plan_claim_takes_what_the_previous_claim_took(db_url: str) -> None:
    """worker.claim_events_v3 (sql/012) against worker.claim_events_v2 (sql/008), still in the
    schema for the previous version's workers: the same rows, for every mode and limit (both
    flags, which no caller sends, included), on a queue with every case the claim tells apart.
    (The order of the rows is neither's promise: two events of one subject are never claimed
    together.)"""
    with psycopg.connect(db_url, autocommit=True) as conn:
        _mixed_queue(conn)
        modes = itertools.product([False, True], [False, True], [0, 1, 3, 10, 60, 500])
        for suspects, urgent, limit in modes:
            claims = []
            for version in ("v2", "v3"):
                with conn.transaction(force_rollback=True):
                    claims.append(
                        conn.execute(
                            f"SELECT * FROM worker.claim_events_{version}('w1', %s, %s, %s)",
                            (limit, suspects, urgent),
                        ).fetchall()
                    )
            old, new = claims
            assert old or not limit or (suspects and urgent), (suspects, urgent, limit)
            assert sorted(new) == sorted(old), (suspects, urgent, limit)
