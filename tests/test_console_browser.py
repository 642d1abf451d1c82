"""The console in a real browser: Playwright driving the machine's Chromium (Debian's
`apt-get install chromium`; Playwright never downloads one here) against the worker's real HTTP
server, a real worker, and the fake providers over the real SDKs.

Set CONSOLE_SCREENSHOT_DIR=docs to refresh the README's screenshots.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from core.db import create_pool
from core.settings import Settings
from listener.http import HttpServer, Surface, create_app
from listener.stream import EventStream
from scheduler.runs import run_job_now
from testkit.fake_providers import FakeProviders, Reply
from tests.appdata import add_party, events
from tests.consoleharness import PASSWORD
from tests.notifyharness import provider_settings, running_router, wait_finished

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")

#: .ci/run sets it: there a missing Chromium fails the test instead of skipping it.
REQUIRED = os.environ.get("CONSOLE_BROWSER_REQUIRED") == "1"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None and not REQUIRED,
        reason="no Chromium on this machine: `apt-get install chromium` (.ci/run does)",
    ),
]
CLIENT_WA = "whatsapp:+61400000002"


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    with FakeProviders() as fake:
        yield fake


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The worker's own HTTP app on a real port; yields its base URL."""
    assert settings.database_url
    pool = create_pool(settings.database_url, 4)
    await pool.open()
    # The console does not read the LISTEN stream (only /healthz does): it is not started.
    stream = EventStream(settings.database_url, wake=None)  # type: ignore[arg-type]
    server = HttpServer(create_app(Surface(settings, pool, stream)), port=0, host="127.0.0.1")
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()
        await pool.close()


def save(shot: bytes, name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(shot)
    if target := os.environ.get("CONSOLE_SCREENSHOT_DIR"):
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / name).write_bytes(shot)


def walk(db: psycopg.Connection, booking: str, statuses: list[str]) -> None:
    for status in statuses:
        db.execute("UPDATE bookings SET status = %s WHERE id = %s", (status, booking))


async def test_an_operator_finds_a_failed_delivery_and_retries_it_until_sent(
    db: psycopg.Connection, db_url: str, fake: FakeProviders, tmp_path: Path
) -> None:
    assert CHROMIUM, "CONSOLE_BROWSER_REQUIRED=1 but no Chromium: apt-get install chromium"
    expect = async_api.expect
    booking, _, _ = add_party(db)
    walk(db, booking, ["approved", "deposit_uploaded", "deposit_verified"])
    reference = db.execute("SELECT reference FROM bookings WHERE id = %s", (booking,)).fetchone()[0]
    # An OTP event whose code is gone by the time it is handled fails (the overview counts it).
    db.execute(
        "INSERT INTO worker.events (kind, subject_id, payload) VALUES ('otp.created', 'otp:gone',"
        " jsonb_build_object('otp_id', gen_random_uuid(), 'purpose', 'login'))"
    )
    fake.reject("twilio", CLIENT_WA, Reply(400, code=21211))  # the provider refuses the client, at first
    settings = provider_settings(db_url, fake, console_password=PASSWORD)
    async with running_router(settings) as worker, serving(settings) as base:
        await wait_finished(db, 5)
        await run_job_now(worker.pool, settings, "all")  # a job run for the overview to show
        verified = next(e["id"] for e in events(db) if e["kind"] == "booking.deposit_verified")
        async with async_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page(viewport={"width": 1360, "height": 900})
            try:
                # Signed out, the console sends the browser to sign in.
                await page.goto(f"{base}/console/")
                await page.get_by_label("Password").fill(PASSWORD)
                await page.get_by_role("button", name="Sign in").click()
                await expect(page.get_by_role("heading", name="Events per kind")).to_be_visible()
                otp = page.locator("#overview tr", has_text="otp.created").first
                await expect(otp.locator("td.num").last).to_have_text("1")  # failed
                await expect(page.locator("#overview")).to_contain_text("otp code not found")
                # Three refused WhatsApp messages in the last 24 hours (their events are done).
                whatsapp = page.locator("#overview tr", has_text="whatsapp")
                await expect(whatsapp.locator("td.num").first).to_have_text("3")
                save(await page.screenshot(full_page=True), "console-overview.png", tmp_path)

                # The failed deliveries list shows the client's refused WhatsApp messages, masked.
                await page.get_by_role("link", name="Failed & skipped").click()
                rows = page.locator("tr", has_text="21211")
                await expect(rows).to_have_count(3)  # created, approved, deposit verified
                await expect(rows.first).to_contain_text("+61******002")

                # Find the booking by its reference and open the deposit confirmation's timeline.
                await page.get_by_label("Find").first.fill(reference)
                await page.keyboard.press("Enter")
                await page.get_by_role("link", name=f"#{verified}").click()
                delivery = page.locator("li.delivery", has_text="+61******002")
                await expect(delivery.locator(".status")).to_have_text("failed")
                await expect(delivery).to_contain_text("21211")
                save(await page.screenshot(full_page=True), "console-timeline.png", tmp_path)

                # The provider accepts the number now; retry, confirm, and watch it turn sent.
                fake.reset()
                await delivery.get_by_role("link", name="Retry…").click()
                await expect(page.get_by_role("heading", name="Retry?")).to_be_visible()
                await page.get_by_role("button", name="Yes, retry").click()
                await expect(page.locator(".notice")).to_contain_text("Requeued")
                await expect(delivery.locator(".status")).to_have_text("sent", timeout=20_000)
            finally:
                await browser.close()
    assert [r.body["To"] for r in fake.received("twilio")] == [CLIENT_WA]
