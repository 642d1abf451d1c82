"""End to end: rows written by the app become WhatsApp messages and emails, through the real
router in a worker, the real twilio and resend SDKs, and the fake providers over HTTP."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from click.testing import CliRunner

from core.db import create_pool
from core.logs import configure_logging
from handlers.delivery import Message
from handlers.email import send_email
from handlers.provider_http import provider_connection_limit
from handlers.resend_transport import ResendEmail
from handlers.router import NotificationRouter
from handlers.twilio_transport import TwilioWhatsApp
from handlers.whatsapp import send_admin_whatsapp, send_whatsapp
from listener.cli import main as cli
from testkit.fake_providers import Recorded, Reply
from tests.appdata import add_booking, add_client, add_party, add_performer, events
from tests.notifyharness import (
    RESEND_KEY,
    TWILIO_TOKEN,
    ledger,
    provider_settings,
    running_router,
    wait_finished,
)
from tests.waiting import async_wait_until

ADMIN, CLIENT, PERFORMER = "whatsapp:+61400000001", "whatsapp:+61400000002", "whatsapp:+61400000003"
CLIENT_EMAIL = "ann@example.com"
LIFECYCLE = ["approved", "deposit_uploaded", "deposit_verified", "accepted", "cancelled"]


def walk(db: psycopg.Connection, booking: str, statuses: list[str]) -> None:
    for status in statuses:
        reason = "Venue closed by council" if status == "cancelled" else None
        db.execute(
            "UPDATE bookings SET status = %s, cancellation_reason = %s, updated_at = now() WHERE id = %s",
            (status, reason, booking),
        )


def by_event(requests: list[Recorded], rows: list[dict], id_of) -> dict[int, list[Recorded]]:
    """Provider requests grouped by the event whose ledger row holds the provider's id."""
    event_of = {row["provider_message_id"]: row["event_id"] for row in rows if row["provider_message_id"]}
    grouped: dict[int, list[Recorded]] = defaultdict(list)
    for request in requests:
        grouped[event_of[id_of(request)]].append(request)
    return grouped


async def test_booking_lifecycle_sends_the_catalog_in_order(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    booking, _, _ = add_party(db)
    db.execute("UPDATE clients SET full_name = '<script>alert(1)</script> Client'")
    walk(db, booking, LIFECYCLE)
    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 6) == {"done": 6}

    rows = ledger(db)
    kinds = [e["kind"] for e in events(db)]
    assert kinds == ["booking.created", *(f"booking.{s}" for s in LIFECYCLE)]
    event_ids = [e["id"] for e in events(db)]
    wa = fake.received("twilio")
    mail = fake.received("resend")
    wa_by_event = by_event(wa, rows, lambda r: r.response["sid"])
    mail_by_event = by_event(mail, rows, lambda r: r.response["id"])
    expected_wa = [
        {ADMIN, CLIENT, PERFORMER},
        {CLIENT, PERFORMER},
        {ADMIN},
        {CLIENT, PERFORMER},
        {CLIENT, ADMIN},
        {ADMIN, CLIENT, PERFORMER},
    ]
    expected_mail_subjects = ["We received", "approved", None, "Booking confirmed", None, "cancelled"]
    for event_id, to_set, subject in zip(event_ids, expected_wa, expected_mail_subjects, strict=True):
        sent = wa_by_event[event_id]
        assert sorted(r.body["To"] for r in sent) == sorted(to_set), event_id
        assert all(r.body["From"] == "whatsapp:+14155238886" for r in sent)
        emails = mail_by_event.get(event_id, [])
        if subject is None:
            assert emails == []
        else:
            assert [e.body["to"] for e in emails] == [[CLIENT_EMAIL]]
            assert subject in emails[0].body["subject"]
    # Exactly these and nothing else, each once.
    assert len(wa) == 13 and len(mail) == 4
    # In order per booking: every request of an event arrived before any of the next event's.
    arrival = {eid: [r.time for r in wa_by_event[eid] + mail_by_event.get(eid, [])] for eid in event_ids}
    for earlier, later in itertools.pairwise(event_ids):
        assert max(arrival[earlier]) <= min(arrival[later])
    # The reason reaches every party of the cancellation.
    assert all("Venue closed by council" in r.body["Body"] for r in wa_by_event[event_ids[-1]])
    assert "Venue closed by council" in mail_by_event[event_ids[-1]][0].body["html"]
    # HTML escapes every value; the plain-text part is sent too.
    for email in mail:
        assert "<script>" not in email.body["html"]
        assert email.body["text"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mail[0].body["html"]
    # Each email carries an Idempotency-Key, distinct per (event, recipient).
    keys = [e.headers.get("Idempotency-Key") for e in mail]
    assert all(keys) and len(set(keys)) == len(keys)
    # The ledger: one row per delivery, all sent, recipients normalised.
    assert {r["status"] for r in rows} == {"sent"} and len(rows) == 17
    assert {r["recipient"] for r in rows} == {"+61400000001", "+61400000002", "+61400000003", CLIENT_EMAIL}


async def test_opt_outs_skip_only_that_channel_and_admin_is_always_told(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    client = add_client(db, whatsapp_opt_in=False)
    performer = add_performer(db, whatsapp_opt_in=False, email_opt_in=False)
    add_booking(db, client, performer)
    async with running_router(provider_settings(db_url, fake)):
        await wait_finished(db, 1)
    assert [r.body["To"] for r in fake.received("twilio")] == [ADMIN]
    assert [r.body["to"] for r in fake.received("resend")] == [[CLIENT_EMAIL]]
    skipped = {(r["recipient_role"], r["channel"]): r for r in ledger(db) if r["status"] == "skipped"}
    assert set(skipped) == {("client", "whatsapp"), ("performer", "whatsapp")}
    assert {r["error_code"] for r in skipped.values()} == {"opted_out"}


async def test_invalid_numbers_fail_only_their_own_delivery(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    client = add_client(db, phone="not a number")
    performer = add_performer(db, phone="0400 000 009")
    add_booking(db, client, performer)
    fake.reject("twilio", "whatsapp:+61400000009", Reply(400, 21211))
    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 1) == {"done": 1}
    rows = {(r["recipient_role"], r["channel"]): r for r in ledger(db)}
    assert rows[("client", "whatsapp")]["status"] == "failed"
    assert rows[("client", "whatsapp")]["error_code"] == "invalid_number"
    assert rows[("performer", "whatsapp")]["status"] == "failed"
    assert rows[("performer", "whatsapp")]["error_code"] == "21211"
    assert rows[("admin", "whatsapp")]["status"] == "sent"
    assert rows[("client", "email")]["status"] == "sent"


async def test_provider_outage_then_recovery_delivers_every_message_once(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    for _ in range(3):
        add_party(db)
    fake.outage("twilio", Reply(500))
    fake.queue("resend", Reply(429, retry_after=0.2), Reply(500))
    async with running_router(provider_settings(db_url, fake)):
        await async_wait_until(
            lambda: all(e["status"] == "pending" and e["last_error"] for e in events(db)),
            message="every event scheduled for a retry during the outage",
        )
        assert len(fake.received("twilio", ok_only=False)) >= 9 and not fake.received("twilio")
        fake.outage("twilio", None)
        assert await wait_finished(db, 3) == {"done": 3}
    accepted = fake.received("twilio")
    assert len(accepted) == 9 and len({(r.body["To"], r.body["Body"]) for r in accepted}) == 9
    emails = fake.received("resend")
    assert len(emails) == 3
    # The retried email kept its Idempotency-Key: the provider can drop a duplicate.
    all_keys = [r.headers["Idempotency-Key"] for r in fake.received("resend", ok_only=False)]
    assert len(all_keys) == 5 and len(set(all_keys)) == 3
    assert {r["status"] for r in ledger(db)} == {"sent"} and len(ledger(db)) == 12


async def test_redelivering_done_events_sends_nothing_again(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    booking, _, _ = add_party(db)
    walk(db, booking, ["approved"])
    settings = provider_settings(db_url, fake)
    async with running_router(settings):
        await wait_finished(db, 2)
        before = len(fake.requests)
        rows_before = ledger(db)
        result = CliRunner().invoke(
            cli, ["events", "retry", str(events(db)[0]["id"])], env={"DATABASE_URL": db_url}
        )
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(
            cli, ["events", "retry", str(events(db)[1]["id"])], env={"DATABASE_URL": db_url}
        )
        assert result.exit_code == 0, result.output
        await async_wait_until(
            lambda: all(e["attempts"] == 1 and e["status"] == "done" for e in events(db)),
            message="requeued events done again",
        )
    assert len(fake.requests) == before
    assert [(r["channel"], r["recipient"], r["attempts"]) for r in ledger(db)] == [
        (r["channel"], r["recipient"], r["attempts"]) for r in rows_before
    ]


async def test_otp_is_emailed_and_its_code_never_logged(db: psycopg.Connection, db_url: str, fake) -> None:
    captured = io.StringIO()
    configure_logging("DEBUG", "json", captured)
    try:
        db.execute(
            "INSERT INTO otp_codes (email, code, purpose, expires_at) VALUES (%s, %s, 'login', %s)",
            ("Sam@Example.com", "719253", datetime.now(UTC) + timedelta(minutes=10)),
        )
        db.execute(
            "INSERT INTO otp_codes (email, code, purpose, expires_at, used_at)"
            " VALUES (%s, %s, 'login', %s, now())",
            ("used@example.com", "388102", datetime.now(UTC) + timedelta(minutes=10)),
        )
        add_party(db)
        async with running_router(provider_settings(db_url, fake)):
            await wait_finished(db, 3)
        # The same again without credentials: the console transport prints messages, masked.
        db.execute(
            "INSERT INTO otp_codes (email, code, purpose, expires_at) VALUES (%s, %s, 'login', %s)",
            ("sam@example.com", "640581", datetime.now(UTC) + timedelta(minutes=10)),
        )
        async with running_router(provider_settings(db_url, None)):
            await wait_finished(db, 4)
    finally:
        configure_logging("INFO", "json")
    emails = [r for r in fake.received("resend") if r.body["to"] == ["sam@example.com"]]
    assert len(emails) == 1
    assert "719253" in emails[0].body["html"] and "719253" in emails[0].body["text"]
    assert "10 minutes" in emails[0].body["text"]
    used = [r for r in ledger(db) if r["recipient"] == "used@example.com"]
    assert [(r["status"], r["error_code"]) for r in used] == [("skipped", "used")]
    text = captured.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert any(line["event"] == "message.simulated" for line in lines)
    for secret in ("719253", "388102", "640581", TWILIO_TOKEN, RESEND_KEY):
        assert secret not in text
    for personal in ("+61400000002", "0400 000 002", "400000002", CLIENT_EMAIL, "sam@example.com"):
        assert personal not in text
    # The outbox never holds a code, before or after sending (the handler reads it from otp_codes).
    payloads = json.dumps([e["payload"] for e in events(db) if e["kind"] == "otp.created"])
    assert payloads.count("otp_id") == 3
    assert not any(code in payloads for code in ("719253", "388102", "640581"))


async def test_an_otp_expired_before_its_turn_sends_nothing(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    db.execute(
        "INSERT INTO otp_codes (email, code, purpose, expires_at) VALUES (%s, %s, 'login', %s)",
        ("late@example.com", "551904", datetime.now(UTC) + timedelta(minutes=10)),
    )
    # The app retires the code (superseded by a newer one) before the worker gets to it.
    db.execute("UPDATE otp_codes SET expires_at = now() - interval '1 second'")
    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 1) == {"done": 1}
    assert fake.requests == []
    assert [(r["recipient"], r["status"], r["error_code"]) for r in ledger(db)] == [
        ("late@example.com", "skipped", "expired")
    ]


async def test_a_retried_otp_email_is_byte_identical_under_its_idempotency_key(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    fake.queue("resend", Reply(500, delay=1))
    async with running_router(provider_settings(db_url, fake)):
        # A 10-minute code with 60.8 s left at the first attempt and under 60 s at the retry: an
        # email saying how many minutes are left would change between the two.
        db.execute(
            "INSERT INTO otp_codes (email, code, purpose, created_at, expires_at) VALUES"
            " ('sam@example.com', '302817', 'login', now() - interval '539.2 seconds',"
            " now() + interval '60.8 seconds')"
        )
        assert await wait_finished(db, 1) == {"done": 1}
    first, retry = fake.received("resend", ok_only=False)
    assert (first.status, retry.status) == (500, 200)
    assert first.headers["Idempotency-Key"] == retry.headers["Idempotency-Key"]
    assert first.body == retry.body
    assert "10 minutes" in retry.body["text"] and "10 minutes" in retry.body["html"]


async def test_scheduler_events_send_and_write_in_app_rows(db: psycopg.Connection, db_url: str, fake) -> None:
    booking, client, performer = add_party(db)
    with db.transaction():
        db.execute("SET LOCAL flavor_worker.silence = 'on'")
        db.execute(
            "UPDATE bookings SET amount_paid = 200, status = 'deposit_verified' WHERE id = %s", (booking,)
        )
    for kind, payload in (
        ("booking.reminder_due", {"booking_id": booking, "hours_until_event": 24}),
        ("booking.payment_due", {"booking_id": booking, "outstanding": "600.00"}),
    ):
        db.execute(
            "INSERT INTO worker.events (kind, subject_id, payload, dedup_key) VALUES (%s, %s, %s, %s)",
            (kind, booking, json.dumps(payload), f"{kind}:{booking}"),
        )
    db.execute("NOTIFY worker_events")
    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 3) == {"done": 3}
    notes = db.execute(
        "SELECT recipient_type, recipient_id::text, type, title, message FROM notifications"
        " ORDER BY type, recipient_type"
    ).fetchall()
    assert [(n[0], n[1], n[2]) for n in notes] == [
        ("client", client, "booking_reminder"),
        ("performer", performer, "booking_reminder"),
        ("client", client, "payment_reminder"),
    ]
    assert "24 hours" in notes[0][4] and "$600.00 AUD" in notes[2][4]
    wa = [r.body for r in fake.received("twilio")]
    assert sum("24 hours" in b["Body"] for b in wa) == 2
    assert [b["To"] for b in wa if "$600.00 AUD" in b["Body"]] == [CLIENT]
    subjects = sorted(r.body["subject"] for r in fake.received("resend"))
    assert sum("24 hours" in s for s in subjects) == 2 and sum("$600.00 AUD" in s for s in subjects) == 1
    in_app = [r for r in ledger(db) if r["channel"] == "in_app"]
    assert {r["recipient"] for r in in_app} == {f"client:{client}", f"performer:{performer}"}


async def test_vetting_decision_emails_the_applicant_with_notes(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    db.execute(
        "INSERT INTO vetting_applications (full_name, stage_name, email, status, review_notes)"
        " VALUES ('Lee Dancer', 'Lee <b>Star</b>', 'Lee@Example.com', 'approved',"
        " 'Great audition & references')"
    )
    async with running_router(provider_settings(db_url, fake)):
        await wait_finished(db, 1)
    [email] = fake.received("resend")
    assert email.body["to"] == ["lee@example.com"]
    assert "approved" in email.body["subject"]
    assert "Great audition &amp; references" in email.body["html"]
    assert "Lee &lt;b&gt;Star&lt;/b&gt;" in email.body["html"]
    assert "Great audition & references" in email.body["text"]


def body_lines(request: Recorded) -> list[str]:
    return request.body["Body"].split("\n")


async def test_a_100_kb_venue_still_sends_every_whatsapp_within_twilios_limit(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    """The venue is cut with an ellipsis before rendering; the message's own lines stay whole.
    (Before: a 100 KB Body, which Twilio refuses for good, error 21617.)"""
    venue = "Grand Hall, 1 Long Road " * 4_200  # 100,800 characters
    booking, _, _ = add_party(db, venue=venue)
    settings = provider_settings(
        db_url, fake, whatsapp_content_templates={"booking_created_performer": "HX" + "1" * 32}
    )
    async with running_router(settings):
        assert await wait_finished(db, 1) == {"done": 1}
    assert {r["status"] for r in ledger(db)} == {"sent"} and len(ledger(db)) == 4
    sent = {r.body["To"]: r for r in fake.received("twilio")}
    assert set(sent) == {ADMIN, CLIENT, PERFORMER}
    assert all(len(r.body.get("Body", "")) <= 1600 for r in sent.values())
    admin = body_lines(sent[ADMIN])
    assert len(admin) == 7 and admin[0].startswith("New booking request FE-")
    [venue_line] = [line for line in admin if line.startswith("Venue: ")]
    assert venue_line.endswith("…") and venue.startswith(venue_line.removeprefix("Venue: ")[:-1])
    assert admin[-1] == f"Review: http://localhost:3000/admin/bookings/{booking}"
    # An approved Content template's variables: each on one line and within Twilio's 256.
    variables = json.loads(sent[PERFORMER].body["ContentVariables"])
    assert set(variables) == {"1", "2", "3", "4"} and variables["1"] == "Nova"
    assert all(len(v) <= 250 and "\n" not in v for v in variables.values())
    assert variables["4"].startswith("Hi Nova, new booking request FE-") and variables["4"].endswith("…")


async def test_values_from_rows_cannot_add_lines_to_any_message(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    """Line breaks and control characters in names, the reference and the venue collapse to one
    space in WhatsApp bodies and email subjects; the email's HTML still escapes every value."""
    hostile = "<script>alert(1)</script>\r\nBcc: evil@example.net"
    client = add_client(db, full_name=hostile)
    performer = add_performer(db, stage_name="DJ\u2028Nova\x1b[31m")
    add_booking(db, client, performer, reference="FE-9\r\nBcc: evil@example.net", venue="Hall\n\n\tB")
    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 1) == {"done": 1}
    one_line_name = "<script>alert(1)</script> Bcc: evil@example.net"
    sent = {r.body["To"]: r for r in fake.received("twilio")}
    admin = body_lines(sent[ADMIN])
    assert admin[:5] == [
        "New booking request FE-9 Bcc: evil@example.net",
        f"Client: {one_line_name}",
        "Performer: DJ Nova [31m",
        admin[3],
        "Venue: Hall B",
    ]
    assert len(admin) == 7
    for request in sent.values():
        assert not any(c in request.body["Body"] for c in "\r\x1b\u2028\t")
    assert len(body_lines(sent[CLIENT])) == 2 and len(body_lines(sent[PERFORMER])) == 1
    [email] = fake.received("resend")
    assert email.body["subject"] == "We received your booking request FE-9 Bcc: evil@example.net"
    assert "<script>" not in email.body["html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.body["html"]
    assert "\r" not in email.body["text"]
    assert "Reference: FE-9 Bcc: evil@example.net\nPerformer: DJ Nova [31m\n" in email.body["text"]


def captured_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_every_message_not_sent_logs_one_line_with_its_reason(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    """Ops read the logs, not the ledger: each failed or skipped delivery has its own line
    (once, even when the provider refused it), with a masked recipient and the reason."""
    client = add_client(db, phone="not a number", email_opt_in=False)
    performer = add_performer(db, phone="0400 000 009")
    add_booking(db, client, performer)
    fake.reject("twilio", "whatsapp:+61400000009", Reply(400, 21211))
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    try:
        async with running_router(provider_settings(db_url, fake, admin_whatsapp=None)):
            assert await wait_finished(db, 1) == {"done": 1}
    finally:
        configure_logging("INFO", "json")
    rows = {(r["recipient_role"], r["channel"]): r for r in ledger(db)}
    assert {key: (r["status"], r["error_code"]) for key, r in rows.items()} == {
        ("admin", "whatsapp"): ("failed", "missing_address"),
        ("client", "whatsapp"): ("failed", "invalid_number"),
        ("client", "email"): ("skipped", "opted_out"),
        ("performer", "whatsapp"): ("failed", "21211"),
    }
    lines = [line for line in captured_lines(stream) if line["event"].startswith("delivery.")]
    logged = sorted(
        (line["event"], line["recipient_role"], line["channel"], line["template"], line["reason"],
         line["recipient_masked"])
        for line in lines
    )  # fmt: skip
    [event_id] = {r["event_id"] for r in rows.values()}
    assert logged == [
        ("delivery.failed", "admin", "whatsapp", "booking_created_admin", "missing_address", "admin"),
        ("delivery.failed", "client", "whatsapp", "booking_created_client", "invalid_number",
         f"client:{client}"),
        ("delivery.failed", "performer", "whatsapp", "booking_created_performer", "21211", "+61******009"),
        ("delivery.skipped", "client", "email", "booking_received", "opted_out", "a***@example.com"),
    ]  # fmt: skip
    assert all(line["event_id"] == event_id and line["kind"] == "booking.created" for line in lines)
    assert [line["provider"] for line in lines if line["reason"] == "21211"] == ["twilio"]
    for personal in ("+61400000009", "0400 000 009", "400000009", CLIENT_EMAIL):
        assert personal not in stream.getvalue()


async def test_an_unknown_event_kind_is_logged_and_failed_with_its_reason(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    """A kind nobody routes (a newer trigger's, a typo) fails visibly, ready for `events retry`
    once a worker knows it; a kind that is known to send nothing is simply done."""
    for kind in ("booking.teleported", "booking.completed"):
        db.execute(
            "INSERT INTO worker.events (kind, subject_id, payload) VALUES (%s, %s, '{}')", (kind, kind)
        )
    db.execute("NOTIFY worker_events")
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    try:
        async with running_router(provider_settings(db_url, fake)):
            assert await wait_finished(db, 2) == {"done": 1, "failed": 1}
    finally:
        configure_logging("INFO", "json")
    status = {e["kind"]: (e["status"], e["last_error"]) for e in events(db)}
    assert status["booking.completed"] == ("done", None)
    assert status["booking.teleported"][0] == "failed"
    assert status["booking.teleported"][1].startswith("unknown_kind")
    [line] = [line for line in captured_lines(stream) if line["event"] == "event.unknown_kind"]
    teleported = next(e["id"] for e in events(db) if e["kind"] == "booking.teleported")
    assert (line["event_id"], line["kind"], line["level"]) == (teleported, "booking.teleported", "warning")
    assert fake.requests == [] and ledger(db) == []


def silent_party(db: psycopg.Connection, **booking_values) -> tuple[str, str, str]:
    """A party whose writes make no events (as a backfill would): the test queues its own."""
    with db.transaction():
        db.execute("SET LOCAL flavor_worker.silence = 'on'")
        return add_party(db, **booking_values)


def queue_event(db: psycopg.Connection, kind: str, booking: str, **payload) -> None:
    """An event as the scheduler writes it."""
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, payload, dedup_key) VALUES (%s, %s, %s, %s)",
        (kind, booking, json.dumps({"booking_id": booking, **payload}), f"{kind}:{booking}"),
    )
    db.execute("NOTIFY worker_events")


async def test_a_failing_in_app_write_retries_without_resending_what_went_out(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    booking, client, performer = silent_party(db, status="accepted")
    db.execute("ALTER TABLE notifications RENAME TO notifications_elsewhere")  # a deploy gone wrong
    queue_event(db, "booking.reminder_due", booking, hours_until_event=24)
    async with running_router(provider_settings(db_url, fake)):
        await async_wait_until(
            lambda: events(db)[0]["attempts"] >= 2 and events(db)[0]["status"] == "pending",
            message="the reminder retried while its in-app rows cannot be written",
        )
        assert "UndefinedTable" in events(db)[0]["last_error"]
        sent_early = {(r["channel"], r["recipient_role"]) for r in ledger(db)}
        assert sent_early == {(c, role) for c in ("whatsapp", "email") for role in ("client", "performer")}
        db.execute("ALTER TABLE notifications_elsewhere RENAME TO notifications")
        assert await wait_finished(db, 1) == {"done": 1}
    # Every WhatsApp and email went out exactly once, however often the event was retried.
    assert sorted(r.body["To"] for r in fake.received("twilio")) == [CLIENT, PERFORMER]
    assert len(fake.received("resend")) == 2
    rows = ledger(db)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"sent"}
    assert db.execute("SELECT recipient_id::text FROM notifications ORDER BY recipient_type").fetchall() == [
        (client,),
        (performer,),
    ]


async def test_a_row_the_notifications_table_refuses_fails_only_that_delivery(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    booking, _, _ = silent_party(db, status="deposit_verified")
    db.execute("ALTER TABLE notifications ADD CONSTRAINT short_titles CHECK (length(title) < 5)")
    queue_event(db, "booking.reminder_due", booking, hours_until_event=24)
    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 1) == {"done": 1}
    rows = {(r["channel"], r["recipient_role"]): r for r in ledger(db)}
    assert {rows[("in_app", role)]["status"] for role in ("client", "performer")} == {"failed"}
    assert rows[("in_app", "client")]["error_code"] == "23514"  # check_violation
    assert len(fake.received("twilio")) == 2 and len(fake.received("resend")) == 2


@pytest.mark.parametrize("status", ["cancelled", "pending", "completed"])
async def test_a_reminder_for_a_booking_no_longer_confirmed_is_skipped(
    db: psycopg.Connection, db_url: str, fake, status: str
) -> None:
    booking, _, _ = silent_party(db, status=status)
    queue_event(db, "booking.reminder_due", booking, hours_until_event=24)
    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 1) == {"done": 1}
    assert fake.requests == []
    assert db.execute("SELECT count(*) FROM notifications").fetchone() == (0,)
    rows = ledger(db)
    assert len(rows) == 6
    assert {(r["status"], r["error_code"]) for r in rows} == {("skipped", "no_longer_due")}


async def test_a_payment_reminder_states_the_balance_at_send_time(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    paid_up, _, _ = silent_party(db, status="accepted", amount_paid=800)
    partly, _, _ = silent_party(db, status="accepted", amount_paid=500)
    cancelled, _, _ = silent_party(db, status="cancelled", amount_paid=200)
    for booking in (paid_up, partly, cancelled):  # all queued when $600.00 was still owed
        queue_event(db, "booking.payment_due", booking, outstanding="600.00")
    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 3) == {"done": 3}
    texts = [r.body["Body"] for r in fake.received("twilio")] + [
        r.body["subject"] for r in fake.received("resend")
    ]
    assert len(texts) == 2 and all("$300.00 AUD" in t for t in texts)
    assert not any("$600.00" in t for t in texts)
    [note] = db.execute("SELECT booking_id::text, message FROM notifications").fetchall()
    assert note[0] == partly and "$300.00 AUD" in note[1]
    skipped = {r["event_id"]: r for r in ledger(db) if r["status"] == "skipped"}
    assert len(skipped) == 2 and {r["error_code"] for r in skipped.values()} == {"no_longer_due"}


async def test_twilio_429_retries_no_sooner_than_retry_after(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    add_party(db)
    fake.queue("twilio", Reply(429, retry_after=2))
    async with running_router(provider_settings(db_url, fake)):
        [throttled] = await async_wait_until(
            lambda: [r for r in fake.received("twilio", ok_only=False) if r.status == 429],
            message="the throttled request",
        )
        assert throttled.response["code"] == 20429
        [(run_at, last_error)] = await async_wait_until(
            lambda: db.execute(
                "SELECT extract(epoch FROM run_at), last_error FROM worker.events"
                " WHERE status = 'pending' AND last_error IS NOT NULL"
            ).fetchall(),
            message="the event scheduled for a retry",
        )
        assert float(run_at) >= throttled.time + 2 and "429" in last_error
        assert await wait_finished(db, 1) == {"done": 1}
    to = throttled.body["To"]
    [retried] = [r for r in fake.received("twilio") if r.body["To"] == to]
    assert retried.time >= throttled.time + 2
    # The other messages were not sent again by the retry.
    assert sorted(r.body["To"] for r in fake.received("twilio")) == sorted([ADMIN, CLIENT, PERFORMER])
    assert len(fake.received("resend")) == 1


#: Per provider: who a request was for, the provider's id in its answer, how many a booking sends.
STALLABLE = {
    "twilio": (lambda r: r.body["To"], lambda r: r.response.get("sid"), 3),
    "resend": (lambda r: r.body["to"][0], lambda r: r.response.get("id"), 1),
}


@pytest.mark.parametrize("provider", ["twilio", "resend"])
async def test_a_stalled_provider_times_out_and_the_retry_delivers_once(
    db: psycopg.Connection, db_url: str, fake, provider: str
) -> None:
    recipient_of, id_of, expected = STALLABLE[provider]
    other = "resend" if provider == "twilio" else "twilio"
    add_party(db)
    fake.queue(provider, Reply(200, delay=1.5))  # type: ignore[arg-type]  # > PROVIDER_TIMEOUT_SECONDS
    async with running_router(provider_settings(db_url, fake, provider_timeout_seconds=0.5)):
        assert await wait_finished(db, 1) == {"done": 1}
    [event] = events(db)
    assert event["attempts"] == 2 and "timed out" in event["last_error"]
    # The stalled request is answered after we gave up on it: wait for it, then compare.
    requests = await async_wait_until(
        lambda: r if len(r := fake.received(provider)) == expected + 1 else None,  # type: ignore[arg-type]
        message="the stalled request answered",
    )
    # Only the timed-out message was sent again (the stalled one first); the others went out once.
    assert len({recipient_of(r) for r in requests}) == expected
    [stalled, retry] = sorted(
        (r for r in requests if [recipient_of(q) for q in requests].count(recipient_of(r)) == 2),
        key=lambda r: r.time,
    )
    if provider == "resend":  # the same Idempotency-Key: Resend drops the duplicate
        assert stalled.headers["Idempotency-Key"] == retry.headers["Idempotency-Key"]
    rows = ledger(db)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"sent"}
    ids = {r["provider_message_id"] for r in rows}
    assert id_of(retry) in ids and id_of(stalled) not in ids
    assert len(fake.received(other)) == 4 - expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "attempts"),
    [("concurrent_idempotent_requests", "sent", 2), ("invalid_idempotent_request", "failed", 1)],
)
async def test_resend_409_retries_only_a_concurrent_idempotent_request(
    db: psycopg.Connection, db_url: str, fake, code: str, status: str, attempts: int
) -> None:
    add_party(db)
    fake.queue("resend", Reply(409, code=code))
    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 1) == {"done": 1}
    assert events(db)[0]["attempts"] == attempts
    [email_row] = [r for r in ledger(db) if r["channel"] == "email"]
    assert email_row["status"] == status
    assert email_row["error_code"] == (code if status == "failed" else None)
    requests = fake.received("resend", ok_only=False)
    assert len(requests) == attempts and len({r.headers["Idempotency-Key"] for r in requests}) == 1
    assert len(fake.received("twilio")) == 3


async def test_resend_validation_error_fails_that_email_and_the_rest_go_out(
    db: psycopg.Connection, db_url: str, fake
) -> None:
    add_party(db)
    fake.reject("resend", CLIENT_EMAIL, Reply(422))
    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 1) == {"done": 1}
    rows = {(r["channel"], r["recipient_role"]): r for r in ledger(db)}
    assert (rows[("email", "client")]["status"], rows[("email", "client")]["error_code"]) == (
        "failed",
        "validation_error",
    )
    assert [rows[("whatsapp", role)]["status"] for role in ("admin", "client", "performer")] == ["sent"] * 3
    assert len(fake.received("twilio")) == 3 and len(fake.received("resend", ok_only=False)) == 1


@pytest.mark.parametrize("provider", ["twilio", "resend"])
async def test_a_slow_provider_receives_more_concurrent_messages_than_aiohttps_default_pool(
    db_url: str, fake, provider: str
) -> None:
    """120 messages in flight (40 events' worth) reach a slow provider at once, not 100 then 20."""
    fake.set_latency(1.5, provider)  # type: ignore[arg-type]
    settings = provider_settings(db_url, fake, worker_concurrency=40)
    assert provider_connection_limit(settings) > 120
    # The transport itself: its quota and circuit live in the provider guard in front of it.
    transport = TwilioWhatsApp(settings) if provider == "twilio" else ResendEmail(settings)
    channel = "whatsapp" if provider == "twilio" else "email"
    recipients = [f"+614000{n:05d}" if channel == "whatsapp" else f"guest{n}@example.com" for n in range(120)]
    try:
        await asyncio.gather(
            *(
                transport.send(Message(channel, to, "Hi", subject="Hi", html="<p>Hi</p>", idempotency_key=to))
                for to in recipients
            )
        )
    finally:
        await transport.close()
    arrivals = [r.time for r in fake.received(provider)]  # type: ignore[arg-type]
    assert len(arrivals) == 120
    # None waited for an earlier answer (1.5 s) to free a connection.
    assert max(arrivals) - min(arrivals) < 1.0


@pytest.fixture
async def direct_sends(db_url: str, fake) -> AsyncIterator[NotificationRouter]:
    """The router built as the daemon builds it, so calls outside any event use its transports."""
    pool = create_pool(db_url, 2)
    await pool.open()
    router = NotificationRouter(provider_settings(db_url, fake), pool)
    try:
        yield router
    finally:
        await router.close()
        await pool.close()


async def test_send_whatsapp_sends_one_message_to_the_normalised_number(direct_sends, fake) -> None:
    record = await send_whatsapp("0400 000 007", "Your performer is on the way")
    [request] = fake.received("twilio")
    assert request.body == {
        "To": "whatsapp:+61400000007",
        "From": "whatsapp:+14155238886",
        "Body": "Your performer is on the way",
    }
    assert record is not None and (record.status, record.recipient) == ("sent", "+61400000007")
    assert record.provider_message_id == request.response["sid"]
    # A number that cannot be a phone number is refused before any request.
    refused = await send_whatsapp("call me maybe", "Hello")
    assert refused is not None and (refused.status, refused.error_code) == ("failed", "invalid_number")
    assert len(fake.requests) == 1


async def test_send_admin_whatsapp_reaches_admin_whatsapp(direct_sends, fake) -> None:
    record = await send_admin_whatsapp("Deposit for FE-1001 needs checking")
    [request] = fake.received("twilio")
    assert (request.body["To"], request.body["From"]) == (ADMIN, "whatsapp:+14155238886")
    assert request.body["Body"] == "Deposit for FE-1001 needs checking"
    assert record is not None and (record.status, record.recipient_role) == ("sent", "admin")


async def test_send_email_sends_html_text_reply_to_and_an_idempotency_key(direct_sends, fake) -> None:
    html = "<p>Your total is <b>$10.00</b> &amp; paid.</p>"
    record = await send_email("Guest@Example.com", "Your receipt", html, reply_to="billing@flavor.example")
    await send_email("guest@example.com", "Your receipt", html, reply_to="billing@flavor.example")
    await send_email("guest@example.com", "Another subject", html)
    first, again, other = fake.received("resend")
    assert first.body == {
        "from": direct_sends.dispatcher.settings.from_email,
        "to": ["guest@example.com"],
        "subject": "Your receipt",
        "html": html,
        "text": "Your total is $10.00 & paid.",
        "reply_to": "billing@flavor.example",
    }
    assert "reply_to" not in other.body
    assert record is not None and record.provider_message_id == first.response["id"]
    # The same email to the same person is the same message to Resend; a different one is not.
    key = first.headers["Idempotency-Key"]
    assert key and again.headers["Idempotency-Key"] == key != other.headers["Idempotency-Key"]


async def test_send_email_puts_a_subject_on_one_line(direct_sends, fake) -> None:
    """A subject is a header: whatever a caller passes, it cannot carry a second line."""
    await send_email("guest@example.com", "Your receipt\r\nBcc: evil@example.net", "<p>Hi</p>")
    [request] = fake.received("resend")
    assert request.body["subject"] == "Your receipt Bcc: evil@example.net"


async def test_status_callback_url_and_rate_limit(db_url: str, fake) -> None:
    """TWILIO_STATUS_CALLBACK_URL goes with every message; TWILIO_RATE_PER_SECOND spaces a burst."""
    settings = provider_settings(
        db_url,
        fake,
        twilio_status_callback_url="https://worker.example/webhooks/twilio/status",
        twilio_rate_per_second=60,
    )
    pool = create_pool(db_url, 2)
    await pool.open()
    router = NotificationRouter(settings, pool)
    try:
        await asyncio.gather(*(send_whatsapp(f"0400 000 {n:03d}", "Hi") for n in range(30)))
    finally:
        await router.close()
        await pool.close()
    requests = fake.received("twilio")
    assert len(requests) == 30
    assert {r.body["StatusCallback"] for r in requests} == {"https://worker.example/webhooks/twilio/status"}
    # No burst: the 30 go at least 1/60 s apart (29 intervals, 0.48 s). Unlimited, all 30
    # arrive within a few ms.
    arrivals = sorted(r.time for r in requests)
    assert arrivals[-1] - arrivals[0] >= 0.45
