"""Twilio webhooks in-process on a real database: signatures, inbound commands, status callbacks.

Requests are signed with the twilio SDK's own `RequestValidator`, as Twilio signs them.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import psycopg
import pytest
from twilio.request_validator import RequestValidator

from testkit.fake_providers import FakeProviders
from tests.appdata import add_booking, add_client, add_performer, events
from tests.httpapp import BASE_URL, LiveSurface, live_surface
from tests.notifyharness import provider_settings, running_router, wait_finished
from tests.processes import free_port
from tests.waiting import async_wait_until, wait_until

TOKEN = "twilio-auth-token-for-tests"
CRON_SECRET = "a-long-random-cron-secret-of-40-characters"
PERFORMER = "whatsapp:+61400000003"  # tests.appdata's performer, stored as "+61400000003"
CLIENT = "whatsapp:+61400000002"  # the client, stored as typed: "0400 000 002"
ADMIN = "+61400000009"
STRANGER = "whatsapp:+61400000099"
INBOUND = "/webhooks/twilio/whatsapp"
STATUS = "/webhooks/twilio/status"


def sign(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


async def post_signed(
    live: LiveSurface, path: str, params: dict[str, str], url: str | None = None
) -> httpx.Response:
    signature = sign(url or f"{BASE_URL}{path}", params)
    return await live.client.post(path, data=params, headers={"X-Twilio-Signature": signature})


#: Twilio gives every inbound message its own MessageSid; so do these tests.
_INBOUND_SIDS = itertools.count(1)


def inbound(sender: str, body: str, message_sid: str | None = None) -> dict[str, str]:
    return {
        "MessageSid": message_sid or f"SMinbound{next(_INBOUND_SIDS):04d}",
        "AccountSid": "ACtest",
        "From": sender,
        "To": "whatsapp:+14155238886",
        "Body": body,
        "NumMedia": "0",
    }


@pytest.fixture
def booking(db: psycopg.Connection) -> dict[str, Any]:
    """A deposit-verified booking between the test client and performer, plus a second performer's."""
    client, performer = add_client(db), add_performer(db)
    other = add_performer(db, stage_name="MC Other", phone="+61400000004")
    booking_id = add_booking(db, client, performer, status="deposit_verified")
    other_id = add_booking(db, client, other, status="deposit_verified")
    reference, other_reference = (
        db.execute("SELECT reference FROM bookings WHERE id = %s", (b,)).fetchone()[0]
        for b in (booking_id, other_id)
    )
    return {
        "id": booking_id,
        "reference": reference,
        "other_id": other_id,
        "other_reference": other_reference,
    }


def booking_status(db: psycopg.Connection, booking_id: str) -> str:
    return db.execute("SELECT status FROM bookings WHERE id = %s", (booking_id,)).fetchone()[0]


def audit_rows(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT action, category, entity_id, actor, details FROM audit_logs ORDER BY created_at"
    ).fetchall()


def reply_text(response: httpx.Response) -> str:
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert response.text.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Message>')
    return response.text


# --- signatures ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [INBOUND, STATUS])
async def test_missing_and_bad_signatures_are_rejected(
    db: psycopg.Connection, db_url: str, path: str
) -> None:
    params = inbound(PERFORMER, "ACCEPT FE-1001")
    async with live_surface(db_url, twilio_auth_token=TOKEN) as live:
        missing = await live.client.post(path, data=params)
        bad = await live.client.post(
            path, data=params, headers={"X-Twilio-Signature": "bm90LWEtc2lnbmF0dXJl"}
        )
        wrong_token = await live.client.post(
            path,
            data=params,
            headers={"X-Twilio-Signature": sign(f"{BASE_URL}{path}", params, "other-token")},
        )
        tampered = await live.client.post(
            path,
            data={**params, "Body": "DECLINE FE-1001"},
            headers={"X-Twilio-Signature": sign(f"{BASE_URL}{path}", params)},
        )
    for response in (missing, bad, wrong_token, tampered):
        assert response.status_code == 403
    assert audit_rows(db) == []


async def test_webhooks_are_closed_without_an_auth_token(db_url: str) -> None:
    params = inbound(PERFORMER, "HELP")
    async with live_surface(db_url) as live:
        response = await post_signed(live, INBOUND, params)
    assert response.status_code == 503


async def test_signature_is_checked_against_the_public_url_when_configured(db_url: str) -> None:
    public = "https://worker.example.com/hooks"
    params = inbound(PERFORMER, "HELP")
    async with live_surface(db_url, twilio_auth_token=TOKEN, webhook_base_url=public + "/") as live:
        as_public = await post_signed(live, INBOUND, params, url=f"{public}{INBOUND}")
        as_seen_locally = await post_signed(live, INBOUND, params)
    assert "recognise this number" in reply_text(as_public)
    assert as_seen_locally.status_code == 403


# --- inbound commands ----------------------------------------------------------------


async def test_accept_from_the_booked_performer_accepts_the_booking(
    db: psycopg.Connection, db_url: str, booking: dict[str, Any]
) -> None:
    async with live_surface(db_url, twilio_auth_token=TOKEN) as live:
        response = await post_signed(
            live, INBOUND, inbound(PERFORMER, f"  accept {booking['reference'].lower()} ")
        )
    assert f"{booking['reference']} is accepted" in reply_text(response)
    assert booking_status(db, booking["id"]) == "accepted"
    assert booking_status(db, booking["other_id"]) == "deposit_verified"
    # The ordinary trigger -> event path takes it from here: the client hears through the router.
    accepted = [e for e in events(db) if e["kind"] == "booking.accepted"]
    assert [e["subject_id"] for e in accepted] == [booking["id"]]
    [(action, category, entity_id, actor, details)] = audit_rows(db)
    assert (action, category, entity_id) == ("whatsapp.booking_accepted", "booking", booking["id"])
    assert actor.startswith("performer:")
    assert details == {
        "source": "whatsapp",
        "reference": booking["reference"],
        "status_before": "deposit_verified",
    }


@pytest.mark.parametrize(
    ("sender", "command"),
    [
        (STRANGER, "ACCEPT {reference}"),  # an unknown number
        (CLIENT, "ACCEPT {reference}"),  # the booking's client is not its performer
        ("whatsapp:+61400000004", "ACCEPT {reference}"),  # another performer's number
        (PERFORMER, "ACCEPT {other_reference}"),  # the performer, someone else's booking
        (PERFORMER, "ACCEPT FE-999999"),  # no such booking
        (PERFORMER, "ACCEPT"),  # no reference
        (PERFORMER, "please accept {reference}"),  # not a command
        ("not a number", "ACCEPT {reference}"),
    ],
)
async def test_commands_that_are_not_the_senders_to_give_change_nothing(
    db: psycopg.Connection, db_url: str, booking: dict[str, Any], sender: str, command: str
) -> None:
    before = events(db)
    async with live_surface(db_url, twilio_auth_token=TOKEN) as live:
        response = await post_signed(live, INBOUND, inbound(sender, command.format(**booking)))
    text = reply_text(response)
    assert "Sorry" in text or "Please" in text or "Only the booked performer" in text
    assert booking_status(db, booking["id"]) == "deposit_verified"
    assert booking_status(db, booking["other_id"]) == "deposit_verified"
    assert events(db) == before
    assert audit_rows(db) == []
    assert db.execute("SELECT count(*) FROM notifications").fetchone() == (0,)


async def test_accept_in_a_status_that_does_not_allow_it_changes_nothing(
    db: psycopg.Connection, db_url: str, booking: dict[str, Any]
) -> None:
    db.execute("UPDATE bookings SET status = 'approved' WHERE id = %s", (booking["id"],))
    async with live_surface(db_url, twilio_auth_token=TOKEN) as live:
        response = await post_signed(live, INBOUND, inbound(PERFORMER, f"ACCEPT {booking['reference']}"))
    assert "can't be accepted while it is approved" in reply_text(response)
    assert booking_status(db, booking["id"]) == "approved"
    assert audit_rows(db) == []


async def test_decline_records_the_refusal_and_alerts_the_admin(
    db: psycopg.Connection, db_url: str, booking: dict[str, Any]
) -> None:
    async with live_surface(db_url, twilio_auth_token=TOKEN) as live:
        response = await post_signed(live, INBOUND, inbound(PERFORMER, f"DECLINE {booking['reference']}"))
    assert f"declined {booking['reference']}" in reply_text(response)
    assert booking_status(db, booking["id"]) == "deposit_verified"
    [(action, _, entity_id, _, details)] = audit_rows(db)
    assert (action, entity_id, details["status_before"]) == (
        "whatsapp.booking_declined",
        booking["id"],
        "deposit_verified",
    )
    [alert] = db.execute(
        "SELECT recipient_type, booking_id::text, type, message FROM notifications"
    ).fetchall()
    assert alert[:3] == ("admin", booking["id"], "booking_declined")
    assert "DJ Nova declined booking" in alert[3]
    [event] = [e for e in events(db) if e["kind"] == "booking.declined_by_performer"]
    assert event["subject_id"] == booking["id"]
    assert event["payload"]["command"] == "decline"
    assert event["payload"]["reference"] == booking["reference"]
    # The router turns that event into the admin's WhatsApp, through the fake Twilio.
    with FakeProviders() as fake:
        async with running_router(provider_settings(db_url, fake, admin_whatsapp=ADMIN)):
            await wait_finished(db, len(events(db)))
    # (The fixture's bookings made booking.created events too: their messages went out as well.)
    [alerted] = [r for r in fake.received("twilio") if "declined" in r.body["Body"]]
    assert alerted.body["To"] == f"whatsapp:{ADMIN}"
    assert f"DJ Nova declined booking {booking['reference']}" in alerted.body["Body"]
    [row] = db.execute(
        "SELECT d.recipient, d.template, d.status FROM worker.deliveries d"
        " JOIN worker.events e ON e.id = d.event_id WHERE e.kind = 'booking.declined_by_performer'"
    ).fetchall()
    assert row == (ADMIN, "booking_declined_admin", "sent")


async def test_a_replayed_decline_is_applied_once_and_answered_the_same(
    db: psycopg.Connection, db_url: str, booking: dict[str, Any]
) -> None:
    """Twilio retries a webhook it got no answer to, and a signed request can be replayed: the
    same MessageSid, twice at once and three times after, is one refusal and one admin alert."""
    params = inbound(PERFORMER, f"DECLINE {booking['reference']}", message_sid="SMreplayed0001")
    async with live_surface(db_url, twilio_auth_token=TOKEN) as live:
        together = await asyncio.gather(*(post_signed(live, INBOUND, params) for _ in range(2)))
        after = [await post_signed(live, INBOUND, params) for _ in range(3)]
    replies = {reply_text(response) for response in [*together, *after]}
    assert len(replies) == 1 and f"declined {booking['reference']}" in replies.pop()
    assert [row[0] for row in audit_rows(db)] == ["whatsapp.booking_declined"]
    assert db.execute("SELECT count(*) FROM notifications").fetchone() == (1,)
    declined = [e for e in events(db) if e["kind"] == "booking.declined_by_performer"]
    assert len(declined) == 1
    with FakeProviders() as fake:
        async with running_router(provider_settings(db_url, fake, admin_whatsapp=ADMIN)):
            await wait_finished(db, len(events(db)))
    alerts = [r for r in fake.received("twilio") if "declined" in r.body["Body"]]
    assert [r.body["To"] for r in alerts] == [f"whatsapp:{ADMIN}"]


async def test_an_inbound_message_without_a_message_sid_is_refused(
    db: psycopg.Connection, db_url: str, booking: dict[str, Any]
) -> None:
    params = inbound(PERFORMER, f"DECLINE {booking['reference']}")
    del params["MessageSid"]
    async with live_surface(db_url, twilio_auth_token=TOKEN) as live:
        response = await post_signed(live, INBOUND, params)
    assert response.status_code == 400
    assert audit_rows(db) == []


async def test_a_replayed_status_query_gets_the_first_answer(
    db: psycopg.Connection, db_url: str, booking: dict[str, Any]
) -> None:
    """The stored reply is what a replay gets, even when the booking has moved on since."""
    params = inbound(PERFORMER, f"STATUS {booking['reference']}")
    async with live_surface(db_url, twilio_auth_token=TOKEN) as live:
        first = reply_text(await post_signed(live, INBOUND, params))
        db.execute("UPDATE bookings SET status = 'accepted' WHERE id = %s", (booking["id"],))
        again = reply_text(await post_signed(live, INBOUND, params))
        fresh = reply_text(await post_signed(live, INBOUND, inbound(PERFORMER, params["Body"])))
    assert "deposit verified" in first
    assert again == first
    assert "accepted" in fresh


async def test_status_and_help_answer_without_writing(
    db: psycopg.Connection, db_url: str, booking: dict[str, Any]
) -> None:
    before = events(db)
    async with live_surface(db_url, twilio_auth_token=TOKEN, admin_whatsapp=ADMIN) as live:
        status = reply_text(
            await post_signed(live, INBOUND, inbound(CLIENT, f"status {booking['reference']}"))
        )
        listing = reply_text(await post_signed(live, INBOUND, inbound(PERFORMER, "STATUS")))
        admin = reply_text(
            await post_signed(live, INBOUND, inbound(f"whatsapp:{ADMIN}", f"STATUS {booking['reference']}"))
        )
        helped = reply_text(await post_signed(live, INBOUND, inbound(PERFORMER, "help")))
        stranger = reply_text(await post_signed(live, INBOUND, inbound(STRANGER, "HELP")))
    assert f"{booking['reference']}: deposit verified - Birthday party on" in status
    assert booking["reference"] in listing and booking["other_reference"] not in listing
    assert f"{booking['reference']}: deposit verified" in admin
    assert "ACCEPT FE-1234" in helped and "DECLINE FE-1234" in helped
    assert "recognise this number" in stranger
    assert events(db) == before
    assert audit_rows(db) == []


# --- status callbacks ----------------------------------------------------------------


def add_delivery(db: psycopg.Connection, message_id: str, status: str = "sent") -> int:
    event_id = db.execute(
        "INSERT INTO worker.events (kind, subject_id, status)"
        " VALUES ('booking.accepted', 'b1', 'done') RETURNING id"
    ).fetchone()[0]
    db.execute(
        "INSERT INTO worker.deliveries"
        " (event_id, channel, recipient, recipient_role, status, provider_message_id)"
        " VALUES (%s, 'whatsapp', '+61400000002', 'client', %s, %s)",
        (event_id, status, message_id),
    )
    return event_id


def ledger(db: psycopg.Connection, message_id: str) -> tuple[str, str | None]:
    return db.execute(
        "SELECT status, error_code FROM worker.deliveries WHERE provider_message_id = %s", (message_id,)
    ).fetchone()


def callback(message_id: str, status: str, **extra: str) -> dict[str, str]:
    return {"MessageSid": message_id, "MessageStatus": status, "AccountSid": "ACtest", **extra}


async def test_status_callbacks_update_the_ledger(db: psycopg.Connection, db_url: str) -> None:
    add_delivery(db, "SMdelivered")
    add_delivery(db, "SMfailed")
    add_delivery(db, "SMundelivered")
    async with live_surface(db_url, twilio_auth_token=TOKEN) as live:

        async def post(params: dict[str, str]) -> None:
            assert (await post_signed(live, STATUS, params)).status_code == 204

        await post(callback("SMdelivered", "sent"))
        assert ledger(db, "SMdelivered") == ("sent", None)
        await post(callback("SMdelivered", "delivered"))
        assert ledger(db, "SMdelivered") == ("delivered", None)
        await post(callback("SMdelivered", "read"))
        assert ledger(db, "SMdelivered") == ("read", None)
        await post(callback("SMdelivered", "delivered"))  # late and out of order: read stays
        assert ledger(db, "SMdelivered") == ("read", None)

        await post(callback("SMfailed", "failed", ErrorCode="63016"))
        await post(callback("SMundelivered", "undelivered", ErrorCode="30008"))
        await post(callback("SMunknown", "delivered"))
    assert ledger(db, "SMfailed") == ("failed", "63016")
    assert ledger(db, "SMundelivered") == ("undelivered", "30008")
    assert db.execute("SELECT count(*) FROM worker.deliveries").fetchone() == (3,)
    # Only the callback without a ledger row waits for one; the late "delivered" was simply stale.
    assert stored_callbacks(db) == [("SMunknown", "delivered")]


def stored_callbacks(db: psycopg.Connection) -> list[tuple[str, str]]:
    return db.execute(
        "SELECT provider_message_id, status FROM worker.delivery_callbacks ORDER BY 1"
    ).fetchall()


async def test_a_status_callback_that_beats_its_ledger_row_is_applied_when_the_row_is_written(
    db: psycopg.Connection, db_url: str
) -> None:
    client, performer = add_client(db), add_performer(db)
    # Twilio may call back before the ledger row of a message is committed: here the row's
    # insert waits for a lock this test holds (a trigger made for this test), so the callbacks
    # arrive while the flush that writes it is under way and cannot see them.
    db.execute(
        "CREATE FUNCTION slow_ledger_for_test() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_advisory_lock(7301); PERFORM pg_advisory_unlock(7301); RETURN NEW; END $$"
    )
    holder = psycopg.connect(db_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(7301)")
    db.execute(
        "CREATE TRIGGER slow_ledger BEFORE INSERT ON worker.deliveries FOR EACH ROW"
        " WHEN (NEW.provider_message_id IS NOT NULL AND NEW.recipient_role = 'client')"
        " EXECUTE FUNCTION slow_ledger_for_test()"
    )
    with FakeProviders() as fake:
        # booking.created: WhatsApp to admin, client and performer, and an email to the client.
        settings = provider_settings(db_url, fake, provider_timeout_seconds=10)
        async with live_surface(db_url, twilio_auth_token=TOKEN) as live, running_router(settings):
            add_booking(db, client, performer)

            async def whatsapp_sent() -> dict[str, str] | None:
                sent = {r.body["To"]: r.response["sid"] for r in fake.received("twilio")}
                return sent if len(sent) == 3 else None

            sids = await async_wait_until(whatsapp_sent, timeout=10, message="three WhatsApp messages")
            for params in (
                callback(sids[CLIENT], "read"),
                callback(sids[CLIENT], "delivered"),  # out of order: read stays
                callback(sids[PERFORMER], "delivered"),
            ):
                assert (await post_signed(live, STATUS, params)).status_code == 204
            # The client's callbacks did come first.
            assert ledger(db, sids[CLIENT]) is None
            holder.close()  # the ledger rows may be written now
            assert await wait_finished(db, 1) == {"done": 1}
            await async_wait_until(
                lambda: ledger(db, sids[CLIENT]) == ("read", None), timeout=10,
                message="the early callbacks applied once the row exists",
            )

    [admin_sid] = set(sids.values()) - {sids[CLIENT], sids[PERFORMER]}
    assert ledger(db, sids[PERFORMER]) == ("delivered", None)
    assert ledger(db, admin_sid) == ("sent", None)


async def test_unsigned_status_callback_changes_nothing(db: psycopg.Connection, db_url: str) -> None:
    add_delivery(db, "SMx")
    async with live_surface(db_url, twilio_auth_token=TOKEN) as live:
        response = await live.client.post(STATUS, data=callback("SMx", "failed", ErrorCode="30008"))
    assert response.status_code == 403
    assert ledger(db, "SMx") == ("sent", None)


# --- the real daemon, end to end -------------------------------------------------------


def test_daemon_with_port_accepts_a_signed_accept_and_the_client_hears_of_it(
    db: psycopg.Connection, db_url: str, spawn_worker: Any
) -> None:
    with db.transaction():
        db.execute("SET LOCAL flavor_worker.silence = 'on'")
        client, performer = add_client(db), add_performer(db)
        booking_id = add_booking(db, client, performer, status="deposit_verified")
    reference = db.execute("SELECT reference FROM bookings WHERE id = %s", (booking_id,)).fetchone()[0]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with FakeProviders() as fake:
        worker = spawn_worker(
            db_url,
            PORT=str(port),
            CRON_SECRET=CRON_SECRET,
            TWILIO_ACCOUNT_SID="AC" + "0" * 32,
            TWILIO_AUTH_TOKEN=TOKEN,
            TWILIO_WHATSAPP_NUMBER="+14155238886",
            TWILIO_API_BASE_URL=fake.url,
            ADMIN_WHATSAPP=ADMIN,
            RESEND_API_KEY="re_test_key",
            RESEND_API_URL=fake.url,
            ADMIN_EMAIL="admin@example.com",
        )
        with httpx.Client(base_url=base, timeout=5) as http:
            health = wait_until(lambda: _healthy(http), timeout=30, message="the daemon healthy on PORT")
            assert health.json()["listener"] is True
            assert "flavor_events_done_total" in http.get("/metrics").text
            assert http.get("/api/cron/reminders").status_code == 401
            cron = http.get("/api/cron/reminders", headers={"Authorization": f"Bearer {CRON_SECRET}"})
            assert cron.status_code == 200 and cron.json()["success"] is True

            params = inbound(PERFORMER, f"ACCEPT {reference}")
            url = f"{base}{INBOUND}"
            reply = http.post(INBOUND, data=params, headers={"X-Twilio-Signature": sign(url, params)})
            assert f"{reference} is accepted" in reply_text(reply)
            assert booking_status(db, booking_id) == "accepted"

            def client_message() -> Any:
                sent = [r for r in fake.received("twilio") if r.body.get("To") == CLIENT]
                return sent[0] if sent else None

            message = wait_until(client_message, timeout=20, message="the client's WhatsApp")
            assert reference in message.body["Body"]
            sid = message.response["sid"]
            wait_until(
                lambda: db.execute(
                    "SELECT 1 FROM worker.deliveries WHERE provider_message_id = %s", (sid,)
                ).fetchone(),
                message="the ledger row of the client's message",
            )
            status = callback(sid, "delivered")
            answer = http.post(
                STATUS, data=status, headers={"X-Twilio-Signature": sign(f"{base}{STATUS}", status)}
            )
            assert answer.status_code == 204
            assert ledger(db, sid) == ("delivered", None)
        assert worker.terminate(timeout=30) == 0
    assert worker.events_logged("http.stopped")


def _healthy(http: httpx.Client) -> httpx.Response | None:
    try:
        response = http.get("/healthz")
    except httpx.TransportError:
        return None
    return response if response.status_code == 200 else None
