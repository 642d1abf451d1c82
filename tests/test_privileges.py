"""Only the worker's own role can call the functions of schema `worker`; the app's writes still
emit events (defence in depth: USAGE on the schema must not be the only thing in the way)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from listener.migrate import migrate
from tests.appdata import add_party, events
from tests.pgharness import unique_name

#: A call of each worker function, with arguments of the right types.
CALLS = [
    "SELECT worker.emit_event('booking.created', 'x', '{}'::jsonb)",
    "SELECT * FROM worker.claim_events('intruder', 10, false)",
    "SELECT worker.events_silenced()",
    "SELECT worker.install_triggers()",
    "SELECT worker.install_app_indexes()",
]


@pytest.fixture
def app_role(db: psycopg.Connection, db_url: str) -> Iterator[str]:
    """Conninfo of a role that is not the worker's (the booking app's own): it may read and write
    the app's tables, and even has USAGE on schema `worker`, which used to be the only guard."""
    role = unique_name("fw_app")
    ident = sql.Identifier(role)
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA public, worker TO {}").format(ident))
        db.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {}").format(ident))
        db.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident))
        yield make_conninfo(**{**conninfo_to_dict(db_url), "user": role})
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        db.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_only_the_owner_holds_execute_on_any_worker_function(db: psycopg.Connection) -> None:
    """Every routine of schema `worker`, including ones later migrations add, grants EXECUTE to
    its owner alone (a NULL ACL is PostgreSQL's default: EXECUTE for PUBLIC)."""
    rows = db.execute(
        """SELECT p.proname, p.proacl IS NULL,
                  coalesce(array_agg(a.grantee::regrole::text) FILTER (WHERE a.grantee <> p.proowner
                                                                        OR a.grantee = 0), '{}')
           FROM pg_proc p
           LEFT JOIN LATERAL aclexplode(p.proacl) a ON true
           WHERE p.pronamespace = 'worker'::regnamespace
           GROUP BY p.oid, p.proname, p.proacl"""
    ).fetchall()
    assert len(rows) >= len(CALLS) + 3  # the calls above and the three trigger functions
    assert [(name, default_acl, others) for name, default_acl, others in rows if default_acl or others] == []


def test_another_role_cannot_call_worker_functions_but_its_writes_still_emit_events(
    db: psycopg.Connection, app_role: str
) -> None:
    with psycopg.connect(app_role, autocommit=True) as app:
        for call in CALLS:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
                app.execute(call)
        # The app's own writes fire the (SECURITY DEFINER) triggers as before.
        booking, _, _ = add_party(app)
        app.execute("UPDATE bookings SET status = 'approved' WHERE id = %s", (booking,))
    assert [(e["kind"], e["subject_id"]) for e in events(db)] == [
        ("booking.created", booking),
        ("booking.approved", booking),
    ]


def test_a_role_granted_execute_before_an_upgrade_still_claims_after_it(
    db: psycopg.Connection, db_url: str, app_role: str
) -> None:
    """A worker connecting as a role of its own was granted EXECUTE on the functions of schema
    `worker` as they were (README); sql/012's claim, which replaces v2, is granted to it too."""
    role = conninfo_to_dict(app_role)["user"]
    # The database as it was before sql/012, with the grant the README asks for.
    db.execute("DROP FUNCTION worker.claim_events_v3(text, integer, boolean, boolean)")
    db.execute("DELETE FROM worker.schema_migrations WHERE version = 12")
    db.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA worker TO {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("GRANT SELECT, UPDATE ON worker.events TO {}").format(sql.Identifier(role)))
    migrate(db_url)
    db.execute("INSERT INTO worker.events (kind, subject_id) VALUES ('booking.created', 'b1')")
    with psycopg.connect(app_role, autocommit=True) as worker:
        claimed = worker.execute("SELECT subject_id FROM worker.claim_events_v3('w1', 5, false, false)")
        assert claimed.fetchall() == [("b1",)]
