"""The operator console over HTTP: closed by default, sessions, CSRF, the sign-in rate limit, masked
recipients, no OTP code on any page, keyset pages, and a retry that sends only what is missing
(through the real router and SDKs to the fake providers)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import psycopg

from core.metrics import METRICS
from core.settings import Settings
from listener.http.console.auth import ConsoleAuth, hash_password
from listener.http.console.store import SCAN_LIMIT
from testkit.fake_providers import FakeProviders, Reply
from tests.appdata import add_party, events
from tests.consoleharness import PASSWORD, audit_rows, csrf_of, sign_in, signed_in_csrf
from tests.httpapp import live_surface
from tests.notifyharness import ledger, provider_settings, running_router, wait_finished

CLIENT_WA = "whatsapp:+61400000002"
#: How the app's rows spell the parties' addresses (tests/appdata.py), and the ledger's E.164.
PERSONAL = ["ann@example.com", "nova@example.com", "0400 000 002", "+61400000002", "61400000003"]
OTP_CODE = "493817"


def cookie_line(answer, name: str) -> str:  # type: ignore[no-untyped-def]
    [line] = [line for line in answer.headers.get_list("set-cookie") if line.startswith(f"{name}=")]
    return line


async def test_closed_without_a_password_setting(db_url: str) -> None:
    async with live_surface(db_url) as live:
        for method, path in [
            ("GET", "/console/login"),
            ("POST", "/console/login"),
            ("GET", "/console/"),
            ("GET", "/console/failures"),
            ("POST", "/console/retry"),
        ]:
            answer = await live.client.request(method, path)
            assert answer.status_code == 503, (method, path)
            assert "CONSOLE_PASSWORD" in answer.text


async def test_without_a_session_pages_redirect_and_the_rest_is_401(db_url: str) -> None:
    async with live_surface(db_url, console_password=PASSWORD) as live:
        client = live.client
        answer = await client.get("/console/failures")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/login?next=/console/failures"
        for path in ["/console/overview/live", "/console/events/1/live"]:
            assert (await client.get(path)).status_code == 401
        assert (await client.post("/console/retry", data={"event": "1"})).status_code == 401
        # A forged or tampered cookie is no session.
        client.cookies.set("fw_console_session", "abcd.99999999999.forged", path="/console")
        assert (await client.get("/console/")).status_code == 303


async def test_sign_in_cookie_flags_and_audit_rows(db: psycopg.Connection, db_url: str) -> None:
    async with live_surface(db_url, console_password=PASSWORD) as live:
        wrong = await sign_in(live.client, "not it")
        assert wrong.status_code == 401 and "Wrong password" in wrong.text
        answer = await sign_in(live.client)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/"
        line = cookie_line(answer, "fw_console_session").lower()
        assert "httponly" in line and "samesite=lax" in line and "path=/console" in line
        assert "secure" not in line  # plain http, no proxy saying otherwise
        session_id = answer.cookies["fw_console_session"].split(".")[0]
        assert (await live.client.get("/console/")).status_code == 200
        # Behind a router terminating TLS the cookie is Secure.
        proxied = await sign_in(live.client, **{"X-Forwarded-Proto": "https"})
        assert "secure" in cookie_line(proxied, "fw_console_session").lower()
    async with live_surface(db_url, console_password=PASSWORD, webhook_base_url="https://w.example") as live:
        assert "secure" in cookie_line(await sign_in(live.client), "fw_console_session").lower()
    rows = audit_rows(db)
    assert [(r["action"], r["category"]) for r in rows][:2] == [
        ("console.sign_in_failed", "security"),
        ("console.sign_in", "security"),
    ]
    assert rows[1]["details"]["session"] == session_id == rows[1]["entity_id"]
    assert all("not it" not in str(r) and PASSWORD not in str(r) for r in rows)


async def test_a_hashed_password_opens_the_console(db_url: str) -> None:
    async with live_surface(db_url, console_password_hash=hash_password(PASSWORD)) as live:
        assert (await sign_in(live.client, "not it")).status_code == 401
        assert (await sign_in(live.client)).status_code == 303


async def test_csrf_is_refused_on_every_form(db: psycopg.Connection, db_url: str) -> None:
    db.execute(
        "INSERT INTO worker.events (kind, status, finished_at) VALUES ('booking.created', 'failed', now())"
    )
    async with live_surface(db_url, console_password=PASSWORD) as live:
        client = live.client
        form = await client.get("/console/login")
        token = csrf_of(form.text)
        # Sign-in: the form's token must match its cookie.
        forged = await client.post("/console/login", data={"csrf": "x" + token, "password": PASSWORD})
        assert forged.status_code == 403
        client.cookies.delete("fw_console_login", path="/console")
        assert (
            await client.post("/console/login", data={"csrf": token, "password": PASSWORD})
        ).status_code == 403
        csrf = await signed_in_csrf(client)
        timeline = (await client.get("/console/events/1")).text
        assert "Retry event…" in timeline  # a failed event without a failed delivery is retryable
        assert "Cannot render: booking not found" in timeline
        for data in [{"event": "1"}, {"event": "1", "csrf": "wrong"}]:
            assert (await client.post("/console/retry", data=data)).status_code == 403
        assert (await client.post("/console/logout", data={})).status_code == 403
        assert events(db)[0]["status"] == "failed"  # nothing was requeued
        # With the token, the same request works.
        assert (await client.post("/console/retry", data={"event": "1", "csrf": csrf})).status_code == 303
        assert events(db)[0]["status"] == "pending"


async def test_sign_in_attempts_are_rate_limited_per_client(db_url: str) -> None:
    async with live_surface(db_url, console_password=PASSWORD) as live:
        attacker = {"X-Forwarded-For": "198.51.100.7"}
        for _ in range(5):
            assert (await sign_in(live.client, "guess", **attacker)).status_code == 401
        limited = await sign_in(live.client, PASSWORD, **attacker)  # even the right one, now
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 500
        assert (await sign_in(live.client, PASSWORD, **{"X-Forwarded-For": "203.0.113.9"})).status_code == 303


async def _pages(client, event_ids: list[int], reference: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Every page (and live fragment) of the console for these events, by path."""
    paths = [
        "/console/",
        "/console/overview/live",
        "/console/failures",
        f"/console/find?q={reference}",
        "/console/find?q=ANN@example.com",
        "/console/find?q=0400%20000%20002",
        "/console/find?q=0400000002",
        "/console/find?q=%2B61400000003",
        "/console/retry?channel=whatsapp",
    ]
    for event_id in event_ids:
        paths += [
            f"/console/events/{event_id}",
            f"/console/events/{event_id}/live",
            f"/console/retry?event={event_id}",
        ]
    pages = {}
    for path in paths:
        answer = await client.get(path)
        assert answer.status_code == 200, (path, answer.status_code)
        pages[path] = answer.text
    return pages


async def test_pages_mask_recipients_and_never_show_an_otp_code(
    db: psycopg.Connection, db_url: str, fake: FakeProviders
) -> None:
    booking, _, _ = add_party(db)
    db.execute(
        "INSERT INTO otp_codes (email, code, purpose, expires_at) VALUES (%s, %s, 'login', %s)",
        ("ann@example.com", OTP_CODE, datetime.now(UTC) + timedelta(minutes=10)),
    )
    fake.reject("twilio", CLIENT_WA, Reply(400, code=21211))
    async with running_router(provider_settings(db_url, fake)):
        await wait_finished(db, 2)
    assert any(OTP_CODE in r.body["text"] for r in fake.received("resend"))  # the email carried it
    reference = db.execute("SELECT reference FROM bookings WHERE id = %s", (booking,)).fetchone()[0]
    event_ids = [e["id"] for e in events(db)]
    async with live_surface(db_url, console_password=PASSWORD) as live:
        await signed_in_csrf(live.client)
        pages = await _pages(live.client, event_ids, reference)
    for path, text in pages.items():
        for value in [*PERSONAL, OTP_CODE]:
            assert value not in text, (path, value)
    otp_page = pages[f"/console/events/{event_ids[1]}"]
    assert "Your Flavor" in otp_page or "code" in otp_page.lower()  # the email was rendered ...
    assert "***" in otp_page  # ... with its code masked
    assert "a***@example.com" in pages["/console/find?q=ANN@example.com"]
    phone_page = pages["/console/find?q=0400%20000%20002"]
    assert "+61******002" in phone_page and "21211" in phone_page
    assert "+61******002" in pages["/console/failures"]
    assert "+61******002" in pages["/console/find?q=0400000002"]  # a phone, not event 400000002
    assert "booking.created" in pages[f"/console/find?q={reference}"]


async def test_retry_sends_only_what_is_missing_and_is_audited(
    db: psycopg.Connection, db_url: str, fake: FakeProviders
) -> None:
    add_party(db)
    fake.reject("twilio", CLIENT_WA, Reply(400, code=21211))
    settings = provider_settings(db_url, fake)
    async with running_router(settings):
        await wait_finished(db, 1)
        before = ledger(db)
        assert sorted(r["status"] for r in before) == ["failed", "sent", "sent", "sent"]
        event_id = before[0]["event_id"]
        fake.reset()  # the provider accepts the number now
        async with live_surface(db_url, console_password=PASSWORD) as live:
            csrf = await signed_in_csrf(live.client)
            confirm = await live.client.get(f"/console/retry?event={event_id}")
            assert "+61******002" in confirm.text and "21211" in confirm.text
            answer = await live.client.post("/console/retry", data={"event": str(event_id), "csrf": csrf})
            assert answer.status_code == 303
            assert answer.headers["location"] == f"/console/events/{event_id}?requeued=1"
            session_id = live.client.cookies["fw_console_session"].split(".")[0]
        await wait_finished(db, 1)
    assert [r.body["To"] for r in fake.received("twilio")] == [CLIENT_WA]
    assert fake.received("resend") == []
    assert {r["status"] for r in ledger(db)} == {"sent"}
    [retry] = [r for r in audit_rows(db) if r["action"] == "console.retry"]
    assert retry["category"] == "operations" and retry["entity_id"] == str(event_id)
    assert retry["details"]["session"] == session_id and retry["details"]["requeued"] == [event_id]


async def test_retry_of_a_filter_requeues_only_matching_failed_deliveries(
    db: psycopg.Connection, db_url: str, fake: FakeProviders
) -> None:
    add_party(db)
    add_party(db, event_type="Wedding")
    fake.reject("twilio", CLIENT_WA, Reply(400, code=21211))
    async with running_router(provider_settings(db_url, fake)):
        await wait_finished(db, 2)
    async with live_surface(db_url, console_password=PASSWORD) as live:
        csrf = await signed_in_csrf(live.client)
        email_only = await live.client.post("/console/retry", data={"channel": "email", "csrf": csrf})
        assert email_only.headers["location"].endswith("requeued=0")
        confirm = await live.client.get("/console/retry?channel=whatsapp&reason=21211")
        assert "2 event(s)" in confirm.text
        answer = await live.client.post(
            "/console/retry", data={"channel": "whatsapp", "reason": "21211", "csrf": csrf}
        )
        assert answer.headers["location"] == "/console/failures?channel=whatsapp&reason=21211&requeued=2"
    assert [e["status"] for e in events(db)] == ["pending", "pending"]


async def test_failures_are_paged_by_keyset_without_gaps_or_repeats(
    db: psycopg.Connection, db_url: str
) -> None:
    db.execute(
        "INSERT INTO worker.events (kind, status)"
        " SELECT 'booking.created', 'done' FROM generate_series(1, 60)"
    )
    # 130 problem rows, many sharing a timestamp (the keyset must break ties by id), and sent ones.
    db.execute(
        "INSERT INTO worker.deliveries (event_id, channel, recipient, status, error_code, created_at)"
        " SELECT e.id, c.channel, '+6140000' || lpad(e.id::text, 4, '0'),"
        "        CASE WHEN c.channel = 'in_app' THEN 'sent'"
        "             WHEN e.id % 2 = 0 THEN 'failed' ELSE 'skipped' END,"
        "        'x', now() - (e.id / 3) * interval '1 minute'"
        " FROM worker.events e CROSS JOIN (VALUES ('whatsapp'), ('email'), ('in_app')) c(channel)"
    )
    db.execute(
        "INSERT INTO worker.deliveries (event_id, channel, recipient, status, error_code)"
        " SELECT id, 'whatsapp', 'x' || id, 'undelivered', '30008' FROM worker.events LIMIT 10"
    )
    expected = db.execute(
        "SELECT id FROM worker.deliveries WHERE status <> 'sent' ORDER BY created_at DESC, id DESC"
    ).fetchall()
    async with live_surface(db_url, console_password=PASSWORD) as live:
        await signed_in_csrf(live.client)
        seen: list[int] = []
        path: str | None = "/console/failures"
        while path:
            text = (await live.client.get(path)).text
            seen += [int(i) for i in re.findall(r'<tr data-delivery="(\d+)"', text)]
            more = re.search(r'<a href="([^"]+)">(?:Older|Look further back)', text)
            path = more.group(1).replace("&amp;", "&") if more else None
    assert seen == [row[0] for row in expected] and len(seen) == 130


async def test_a_page_looks_through_a_bounded_walk_then_offers_to_look_further(
    db: psycopg.Connection, db_url: str
) -> None:
    db.execute("INSERT INTO worker.events (kind, status) VALUES ('booking.created', 'done')")
    # One old refused WhatsApp message, behind more skipped emails than a page looks through.
    db.execute(
        "INSERT INTO worker.deliveries (event_id, channel, recipient, status, error_code, created_at)"
        " VALUES (1, 'whatsapp', '+61400000002', 'failed', '21211', now() - interval '1 day')"
    )
    db.execute(
        "INSERT INTO worker.deliveries (event_id, channel, recipient, status, error_code)"
        " SELECT 1, 'email', 'u' || g || '@example.com', 'skipped', 'opted_out'"
        " FROM generate_series(1, %s) g",
        (SCAN_LIMIT + 10,),
    )
    async with live_surface(db_url, console_password=PASSWORD) as live:
        await signed_in_csrf(live.client)
        first = (await live.client.get("/console/failures?channel=whatsapp")).text
        assert "+61******002" not in first and "Looked through the 5,000 most recent" in first
        further = re.search(r'<a href="([^"]+)">Look further back', first).group(1).replace("&amp;", "&")
        second = (await live.client.get(further)).text
    assert "21211" in second and "+61******002" in second and "Look further back" not in second


async def test_rendering_an_event_again_sends_writes_and_counts_nothing(
    db: psycopg.Connection, db_url: str
) -> None:
    booking, _, _ = add_party(db)
    with db.transaction():  # the booking becomes confirmed without an event of its own
        db.execute("SET LOCAL flavor_worker.silence = 'on'")
        db.execute("UPDATE bookings SET status = 'deposit_verified' WHERE id = %s", (booking,))
    event_id = db.execute(
        "INSERT INTO worker.events (kind, subject_id, payload, status) VALUES ('booking.reminder_due',"
        " %s, jsonb_build_object('booking_id', %s::uuid, 'hours_until_event', 24), 'done') RETURNING id",
        (booking, booking),
    ).fetchone()[0]

    def counted() -> float:
        return sum(
            METRICS.registry.get_sample_value("flavor_deliveries_total", {"channel": c, "status": s}) or 0
            for c in ("whatsapp", "email", "in_app")
            for s in ("sent", "simulated", "skipped", "failed")
        )

    before = counted()
    async with live_surface(db_url, console_password=PASSWORD) as live:
        await signed_in_csrf(live.client)
        page = (await live.client.get(f"/console/events/{event_id}")).text
    # The six messages of a reminder, in-app ones included, are shown ...
    assert page.count('<article class="message">') == 6 and "in_app" in page
    # ... and none was sent, written to the app's notifications, or counted in the metrics.
    assert db.execute("SELECT count(*) FROM notifications").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM worker.deliveries").fetchone()[0] == 0
    assert counted() == before


def test_a_session_cookie_expires_and_cannot_be_altered_or_moved_to_another_password() -> None:
    auth = ConsoleAuth(Settings(console_password=PASSWORD, console_session_hours=1))
    session_id, cookie = auth.new_session(now=1_000_000)
    assert auth.session_of(cookie, now=1_000_000 + 3599) == session_id
    assert auth.session_of(cookie, now=1_000_000 + 3601) is None  # expired
    sid, expires, mac = cookie.split(".")
    assert auth.session_of(f"{sid}.{int(expires) + 86400}.{mac}", now=1_000_000) is None  # extended
    assert auth.session_of(f"{'0' * len(sid)}.{expires}.{mac}", now=1_000_000) is None  # another id
    other = ConsoleAuth(Settings(console_password=PASSWORD + "!"))
    assert other.session_of(cookie, now=1_000_000) is None  # a new password signs everyone out
