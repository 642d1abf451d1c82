"""A row the worker cannot read or use fails (or degrades) only its own event or delivery.

Real router in a worker, the real twilio and resend SDKs, the fake providers over HTTP; the bad
rows are written with plain SQL as a careless app (or a schema without our constraints) would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from testkit.fake_providers import FakeProviders
from tests.appdata import add_booking, add_client, add_party, add_performer, events
from tests.notifyharness import ledger, provider_settings, running_router, wait_finished

NEIGHBOUR_BOOKINGS = 45
NEIGHBOUR_OTPS = 5


def add_otp(db: psycopg.Connection, email: str) -> None:
    db.execute(
        "INSERT INTO otp_codes (email, code, purpose, expires_at) VALUES (%s, '482913', 'login', %s)",
        (email, datetime.now(UTC) + timedelta(minutes=10)),
    )


async def test_unreadable_rows_fail_alone_and_their_neighbours_go_out_at_once(
    db: psycopg.Connection, db_url: str, fake: FakeProviders
) -> None:
    """Timestamps psycopg cannot load ('infinity', year 12000), a null amount and an unknown kind,
    claimed in ONE batch with 50 ordinary events (OTP emails among them): each bad event fails
    on its first attempt with its own reason; every neighbour is done on its first attempt,
    with no error of another event in its row."""
    db.execute("ALTER TABLE bookings ALTER COLUMN total_amount DROP NOT NULL")  # as some apps' schemas
    client, performer = add_client(db), add_performer(db)
    bad: dict[str, str] = {}
    with db.transaction():  # one burst, so one claimed batch holds them all
        for n in range(NEIGHBOUR_BOOKINGS):
            add_booking(db, client, performer)
            if n == 10:
                bad[add_booking(db, client, performer, event_start="infinity")] = "timestamp too large"
            if n == 20:
                bad[add_booking(db, client, performer, event_start="12000-01-01T00:00:00Z")] = (
                    "timestamp too large"
                )
            if n == 30:
                bad[add_booking(db, client, performer, total_amount=None)] = "bookings.total_amount is null"
            if n % 9 == 0 and n // 9 < NEIGHBOUR_OTPS:
                add_otp(db, f"waiting{n}@example.com")
        db.execute(
            "INSERT INTO worker.events (kind, subject_id, payload) VALUES ('booking.mystery', 'x', %s)",
            (json.dumps({"booking_id": "not-a-uuid"}),),
        )
    total = NEIGHBOUR_BOOKINGS + NEIGHBOUR_OTPS + len(bad) + 1
    bad["x"] = "unknown_kind"  # failed with its reason (see Notifications), not unreadable

    async with running_router(provider_settings(db_url, fake, claim_batch_size=500)):
        counts = await wait_finished(db, total)

    assert counts == {"done": total - len(bad), "failed": len(bad)}
    rows = events(db)
    failed = {row["subject_id"]: row for row in rows if row["status"] == "failed"}
    assert failed.keys() == bad.keys()
    for subject, reason in bad.items():
        expected = reason if reason == "unknown_kind" else "unreadable_row: " + reason
        assert failed[subject]["last_error"].startswith(expected), failed[subject]
        assert failed[subject]["attempts"] == 1
    done = [row for row in rows if row["status"] == "done"]
    assert [(row["attempts"], row["last_error"]) for row in done] == [(1, None)] * len(done)
    # Every neighbour's messages went out once; nothing reached anyone for the bad rows.
    assert len(fake.received("twilio")) == 3 * NEIGHBOUR_BOOKINGS
    otp_emails = [r for r in fake.received("resend") if r.body["to"][0].startswith("waiting")]
    assert len(otp_emails) == NEIGHBOUR_OTPS
    assert len(fake.received("resend")) == NEIGHBOUR_BOOKINGS + NEIGHBOUR_OTPS
    assert not [row for row in ledger(db) if row["event_id"] in {r["id"] for r in failed.values()}]


@pytest.mark.parametrize("missing", ["client", "performer"])
async def test_a_missing_party_fails_only_its_own_deliveries_and_the_others_are_told(
    db: psycopg.Connection, db_url: str, fake: FakeProviders, missing: str
) -> None:
    """A booking whose client (or performer) row is gone, as a schema without the foreign key
    allows: the admin and the other party still get their messages, naming the missing party;
    the missing one's deliveries are `failed` with `missing_recipient`; the event is done."""
    booking, client, performer = add_party(db)
    db.execute(f"ALTER TABLE bookings DROP CONSTRAINT bookings_{missing}_id_fkey")
    db.execute(f"DELETE FROM {missing}s WHERE id = %s", (client if missing == "client" else performer,))
    db.execute("UPDATE bookings SET status = 'cancelled', cancellation_reason = 'Storm' WHERE id = %s",
               (booking,))

    async with running_router(provider_settings(db_url, fake)):
        assert await wait_finished(db, 2) == {"done": 2}

    present = "performer" if missing == "client" else "client"
    numbers = {"admin": "whatsapp:+61400000001", "client": "whatsapp:+61400000002",
               "performer": "whatsapp:+61400000003"}
    sent = fake.received("twilio")
    # booking.created and booking.cancelled each reach the admin and the party still on record.
    assert sorted(r.body["To"] for r in sent) == sorted([numbers["admin"], numbers[present]] * 2)
    admin_texts = [r.body["Body"] for r in sent if r.body["To"] == numbers["admin"]]
    assert all(f"({missing} record missing)" in text for text in admin_texts), admin_texts
    emails = fake.received("resend")
    assert len(emails) == (2 if present == "client" else 0)  # received + cancelled, to the client
    refused = [(r["kind"], r["channel"], r["status"], r["error_code"]) for r in ledger(db)
               if r["recipient_role"] == missing]
    channels = ["whatsapp", "email"] if missing == "client" else ["whatsapp"]
    assert sorted(refused) == sorted(
        (kind, channel, "failed", "missing_recipient")
        for kind in ("booking.created", "booking.cancelled")
        for channel in channels
    )
