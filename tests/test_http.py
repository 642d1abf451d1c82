"""The HTTP surface in-process: /healthz, /metrics and the platform's cron endpoints, on a real database."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.settings import Settings
from listener.http import HttpServer
from listener.http.probes import probe_routes
from listener.worker import Worker
from tests.appdata import add_booking, add_client, add_performer, events
from tests.httpapp import LiveSurface, live_surface
from tests.logging_handler import LoggingHandler
from tests.processes import REPO
from tests.waiting import async_wait_until

CRON_SECRET = "a-long-random-cron-secret-of-40-characters"


# --- /healthz --------------------------------------------------------------------------


async def test_health_is_200_when_listening_and_the_queue_is_fresh(db_url: str) -> None:
    async with live_surface(db_url) as live:
        response = await live.client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["listener"] is True
    assert body["scheduler"] == "disabled"
    assert body["pending"] == 0


async def test_health_503_while_the_listen_connection_is_down_then_200_after_reconnect(
    db_url: str, pg_admin: str
) -> None:
    dbname = conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(pg_admin, autocommit=True) as admin:
        async with live_surface(db_url) as live:
            assert (await live.client.get("/healthz")).status_code == 200
            # Refuse new connections so the listener stays down after its backend is killed.
            admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
            try:
                admin.execute("SELECT pg_terminate_backend(%s)", (live.stream.backend_pid,))
                down = await async_wait_until(
                    _health_status(live, 503), timeout=10, message="health reports the listener down"
                )
                assert "LISTEN connection is down" in down["reason"]
                assert down["listener"] is False
            finally:
                admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
            up = await async_wait_until(_health_status(live, 200), timeout=20, message="healthy again")
            assert up["listener"] is True


async def test_health_503_while_the_scheduler_is_not_running(db_url: str) -> None:
    async with live_surface(db_url, with_scheduler=True) as live:
        assert live.scheduler is not None
        stopped = await live.client.get("/healthz")
        live.scheduler.start()
        running = await live.client.get("/healthz")
        await live.scheduler.shutdown()
        after = await live.client.get("/healthz")
    assert (stopped.status_code, stopped.json()["scheduler"]) == (503, "stopped")
    assert stopped.json()["reason"] == "scheduler is not running"
    assert (running.status_code, running.json()["scheduler"]) == (200, "running")
    assert (after.status_code, after.json()["scheduler"]) == (503, "stopped")


async def test_health_503_when_the_oldest_due_pending_event_is_too_old(
    db: psycopg.Connection, db_url: str
) -> None:
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, run_at) VALUES ('booking.created', 'b1', %s)",
        (datetime.now(UTC) - timedelta(minutes=10),),
    )
    async with live_surface(db_url, health_max_pending_age_seconds=300) as live:
        response = await live.client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["pending"] == 1
    assert "oldest pending event is 600s old (limit 300s)" in body["reason"]


async def test_events_scheduled_for_later_do_not_make_the_worker_unhealthy(
    db: psycopg.Connection, db_url: str
) -> None:
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, run_at, created_at)"
        " VALUES ('booking.created', 'b1', %s, %s)",
        (datetime.now(UTC) + timedelta(minutes=5), datetime.now(UTC) - timedelta(hours=1)),
    )
    async with live_surface(db_url, health_max_pending_age_seconds=300) as live:
        response = await live.client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["pending"] == 0


async def test_an_event_waiting_behind_its_subjects_retry_does_not_make_the_worker_unhealthy(
    db: psycopg.Connection, db_url: str
) -> None:
    now = datetime.now(UTC)
    # booking b1's first event failed once and waits in backoff; its next event is due but must wait.
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, attempts, run_at, created_at)"
        " VALUES ('booking.created', 'b1', 1, %s, %s), ('booking.approved', 'b1', 0, %s, %s)",
        (
            now + timedelta(minutes=5),
            now - timedelta(hours=1),
            now - timedelta(minutes=50),
            now - timedelta(minutes=50),
        ),
    )
    async with live_surface(db_url, health_max_pending_age_seconds=300) as live:
        response = await live.client.get("/healthz")
    assert response.status_code == 200, response.json()
    assert response.json()["oldest_pending_seconds"] == 0


def _health_status(live: LiveSurface, status: int):  # type: ignore[no-untyped-def]
    async def check() -> dict | None:
        response = await live.client.get("/healthz")
        return response.json() if response.status_code == status else None

    return check


# --- /metrics --------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _scrape(live: LiveSurface) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await live.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return _samples(response.text)


async def test_metrics_expose_the_named_series(db_url: str) -> None:
    async with live_surface(db_url) as live:
        response = await live.client.get("/metrics")
    families = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "flavor_events_claimed",
        "flavor_events_done",
        "flavor_events_retried",
        "flavor_events_failed",
        "flavor_deliveries",
        "flavor_provider_request_seconds",
        "flavor_pending_events",
        "flavor_oldest_pending_seconds",
        "flavor_pending_deliveries",
        "flavor_oldest_pending_delivery_seconds",
        "flavor_job_runs",
        "flavor_listener_reconnects",
    } <= families


async def test_metrics_show_each_channels_backlog(db: psycopg.Connection, db_url: str) -> None:
    """Per channel: open events whose messages on it are not in the ledger yet, and the oldest's
    age; a channel an event is done with no longer counts it (WhatsApp out, email still waiting)."""
    def backlog(samples: dict, channel: str) -> float:
        return samples[("flavor_pending_deliveries", (("channel", channel),))]

    client, performer = add_client(db), add_performer(db)
    first = add_booking(db, client, performer)
    add_booking(db, client, performer)
    async with live_surface(db_url) as live:
        queued = await _scrape(live)
        [event_id] = db.execute(
            "SELECT id FROM worker.events WHERE payload->>'booking_id' = %s", (first,)
        ).fetchone()
        db.execute(
            "INSERT INTO worker.deliveries (event_id, channel, recipient, status) "
            "VALUES (%s, 'whatsapp', '+61400000001', 'sent')", (event_id,)
        )
        after = await _scrape(live)
    assert (backlog(queued, "whatsapp"), backlog(queued, "email"), backlog(queued, "in_app")) == (2, 2, 0)
    assert (backlog(after, "whatsapp"), backlog(after, "email")) == (1, 2)
    assert after[("flavor_oldest_pending_delivery_seconds", (("channel", "email"),))] >= 0


async def test_metrics_move_when_events_flow(db: psycopg.Connection, db_url: str) -> None:
    done = ("flavor_events_done_total", (("kind", "booking.created"),))
    claimed = ("flavor_events_claimed_total", (("kind", "booking.created"),))
    pending = ("flavor_pending_events", ())
    async with live_surface(db_url, poll_interval_seconds=0.2) as live:
        before = await _scrape(live)
        client, performer = add_client(db), add_performer(db)
        for _ in range(3):
            add_booking(db, client, performer)
        queued = await _scrape(live)
        assert queued[pending] == 3
        assert queued[("flavor_oldest_pending_seconds", ())] >= 0

        worker = Worker(live.surface.pool, LoggingHandler(), live.surface.settings)
        running = asyncio.create_task(worker.run())
        try:

            async def drained() -> dict | None:
                # Both move once the outcomes are written; scrape until both show it.
                samples = await _scrape(live)
                counted = samples.get(done, 0) - before.get(done, 0) == 3
                return samples if counted and samples[pending] == 0 else None

            after = await async_wait_until(drained, timeout=15, message="3 events counted as done")
        finally:
            worker.stop()
            await asyncio.wait_for(running, 15)
    assert after[claimed] - before.get(claimed, 0) == 3
    assert after[pending] == 0
    assert [e["status"] for e in events(db)] == ["done"] * 3


# --- /api/cron/* ---------------------------------------------------------------------


async def test_cron_endpoints_refuse_a_missing_or_wrong_token(db_url: str) -> None:
    async with live_surface(db_url, cron_secret=CRON_SECRET) as live:
        for path in ("/api/cron/cleanup", "/api/cron/reminders"):
            missing = await live.client.get(path)
            wrong = await live.client.get(path, headers={"Authorization": f"Bearer {CRON_SECRET}x"})
            bare = await live.client.get(path, headers={"Authorization": CRON_SECRET})
            for response in (missing, wrong, bare):
                assert response.status_code == 401
                assert response.json() == {"error": "Unauthorized"}
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM worker.job_runs").fetchone() == (0,)


async def test_cron_endpoints_are_closed_without_a_secret(db_url: str) -> None:
    async with live_surface(db_url) as live:
        response = await live.client.get("/api/cron/cleanup", headers={"Authorization": "Bearer "})
        reminders = await live.client.get("/api/cron/reminders", headers={"Authorization": "Bearer None"})
    assert response.status_code == 503
    assert reminders.status_code == 503
    assert "CRON_SECRET" in response.json()["error"]


async def test_cron_cleanup_runs_the_jobs_and_answers_the_cron_json(
    db: psycopg.Connection, db_url: str
) -> None:
    client, performer = add_client(db), add_performer(db)
    stale = add_booking(db, client, performer, created_at=datetime.now(UTC) - timedelta(hours=30))
    fresh = add_booking(db, client, performer)
    async with live_surface(db_url, cron_secret=CRON_SECRET) as live:
        response = await live.client.get(
            "/api/cron/cleanup", headers={"Authorization": f"Bearer {CRON_SECRET}"}
        )
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    summary = body["summary"]
    assert {"staleBookings", "notifications", "otps", "auditLogs"} <= set(summary)
    assert (summary["staleBookings"]["cancelled"], summary["staleBookings"]["errors"]) == (1, [])
    for part in ("notifications", "otps", "auditLogs"):
        assert (summary[part]["deleted"], summary[part]["errors"]) == (0, [])
    statuses = dict(db.execute("SELECT id::text, status FROM bookings").fetchall())
    assert statuses == {stale: "cancelled", fresh: "pending"}


async def test_cron_reminders_answers_the_cron_json(db_url: str) -> None:
    async with live_surface(db_url, cron_secret=CRON_SECRET) as live:
        response = await live.client.get(
            "/api/cron/reminders", headers={"Authorization": f"Bearer {CRON_SECRET}"}
        )
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert {"bookingReminders", "paymentReminders"} <= set(body["summary"])
    for part in ("bookingReminders", "paymentReminders"):
        assert (body["summary"][part]["sent"], body["summary"][part]["errors"]) == (0, [])


async def test_cron_errors_are_masked_in_the_answer_and_the_job_run(
    db: psycopg.Connection, db_url: str
) -> None:
    client, performer = add_client(db), add_performer(db)
    add_booking(db, client, performer, created_at=datetime.now(UTC) - timedelta(hours=30))
    # An app-side trigger that fails the cancellation with a real unique violation quoting an email.
    db.execute(
        """
        CREATE TABLE cancellation_notices (email text UNIQUE);
        INSERT INTO cancellation_notices VALUES ('ann@example.com');
        CREATE FUNCTION note_cancellation() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO cancellation_notices SELECT email FROM clients WHERE id = NEW.client_id;
            RETURN NEW;
        END $$;
        CREATE TRIGGER note_cancellation AFTER UPDATE OF status ON bookings
            FOR EACH ROW WHEN (NEW.status = 'cancelled') EXECUTE FUNCTION note_cancellation();
        """
    )
    async with live_surface(db_url, cron_secret=CRON_SECRET) as live:
        response = await live.client.get(
            "/api/cron/cleanup", headers={"Authorization": f"Bearer {CRON_SECRET}"}
        )
    assert response.status_code == 500
    [error] = response.json()["summary"]["staleBookings"]["errors"]
    assert error.startswith("UniqueViolation: duplicate key value")
    assert "Key (email)=(a***@example.com)" in error
    assert "ann@example.com" not in response.text
    stored = db.execute("SELECT summary::text FROM worker.job_runs").fetchone()[0]
    assert "a***@example.com" in stored and "ann@example.com" not in stored


async def test_a_cron_run_that_cannot_start_answers_500_with_a_masked_error(
    db: psycopg.Connection, db_url: str
) -> None:
    # An operator froze the job runs table with a message naming themselves.
    db.execute(
        """
        CREATE FUNCTION freeze_job_runs() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'job runs frozen' USING DETAIL = 'ask ops.lead@example.com or +61 400 000 123';
        END $$;
        CREATE TRIGGER freeze_job_runs BEFORE INSERT ON worker.job_runs
            FOR EACH ROW EXECUTE FUNCTION freeze_job_runs();
        """
    )
    async with live_surface(db_url, cron_secret=CRON_SECRET) as live:
        response = await live.client.get(
            "/api/cron/reminders", headers={"Authorization": f"Bearer {CRON_SECRET}"}
        )
    assert response.status_code == 500
    body = response.json()
    assert body["success"] is False
    assert body["error"].startswith("RaiseException: job runs frozen")
    assert "o***@example.com" in body["error"]
    assert "ops.lead" not in response.text and "400 000 123" not in response.text


# --- the server's shutdown ---------------------------------------------------------------


async def test_http_server_stops_accepting_at_once_and_returns_within_two_seconds() -> None:
    arrived = asyncio.Event()

    async def never_answers(request: Request) -> Response:
        arrived.set()
        await asyncio.Event().wait()
        return Response()

    server = HttpServer(Starlette(routes=[Route("/slow", never_answers)]), 0, host="127.0.0.1")
    await server.start()
    port = server.port
    loop = asyncio.get_running_loop()

    async def refused() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        writer.close()
        return False

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        in_flight = asyncio.create_task(client.get("/slow"))
        await asyncio.wait_for(arrived.wait(), 10)
        started = loop.time()
        stopping = asyncio.create_task(server.stop())
        await async_wait_until(refused, timeout=0.5, message="new connections refused")
        assert not stopping.done()  # the in-flight request still has its grace period
        await stopping
        elapsed = loop.time() - started
        # Past the grace period uvicorn cancels the request; the client gets a 500, not a hang.
        assert (await in_flight).status_code == 500
    assert elapsed < 2.5
    assert await refused()


# --- fly.toml ------------------------------------------------------------------------


def test_fly_toml_runs_the_worker_and_checks_routes_that_exist() -> None:
    config = tomllib.loads((REPO / "fly.toml").read_text())
    assert config["processes"] == {"worker": "flavor-worker run"}
    assert config["deploy"]["release_command"] == "flavor-worker migrate"
    service = config["http_service"]
    assert service["internal_port"] == int(config["env"]["PORT"]) == config["metrics"]["port"]
    assert service["processes"] == ["worker"] and service["auto_stop_machines"] == "off"
    assert config["kill_timeout"] > Settings().shutdown_grace_seconds
    paths = {route.path for route in probe_routes()}
    assert {service["checks"][0]["path"], config["metrics"]["path"]} <= paths
