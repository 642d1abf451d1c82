"""Where messages leave the process: Twilio, Resend, the console, nowhere (null), in-app rows.

Each provider transport holds ONE long-lived HTTP client, created lazily inside the running
loop and closed on shutdown, a client-side rate limit, and maps the provider's errors to
`PermanentDeliveryError` / `TransientDeliveryError` right here at the edge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import psycopg
import resend
import structlog
from resend.http_client_async import AsyncHTTPClient
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client as TwilioClient

from handlers.contract import PermanentDeliveryError, TransientDeliveryError
from handlers.delivery import Message, Sent, Transport
from listener.metrics import METRICS

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from listener.settings import Settings

log = structlog.get_logger(__name__)

#: The SDK logs every request header at INFO; keep only its warnings.
_twilio_sdk_log = logging.getLogger("handlers.transports.twilio_sdk")
_twilio_sdk_log.setLevel(logging.WARNING)

#: Namespace of in-app row ids: one row per (event, recipient), however often it is retried.
_IN_APP_NAMESPACE = uuid.UUID("6f1f4d8e-52a4-4c0e-9d55-3f0e7f3b7a10")


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Retry-After in seconds (the providers send seconds), or None."""
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


class RateLimiter:
    """Spaces requests to at most `rate` per second, allowing a burst of up to `rate` (GCRA)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.burst = max(1.0, rate) * self.interval
        self._tat = 0.0  # theoretical arrival time of the next request

    async def acquire(self) -> None:
        now = time.monotonic()
        tat = max(self._tat, now)
        self._tat = tat + self.interval
        wait = tat + self.interval - self.burst - now
        if wait > 0:
            await asyncio.sleep(wait)


class _TwilioHttpClient(AsyncTwilioHttpClient):
    """The SDK's aiohttp client, raising our error types for answers worth retrying."""

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        try:
            response = await super().request(method, url, *args, **kwargs)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientDeliveryError(f"twilio: {type(exc).__name__}", code="connection") from None
        if response.status_code == 429 or response.status_code >= 500:
            code = _twilio_error_code(response.text) or str(response.status_code)
            raise TransientDeliveryError(
                f"twilio: HTTP {response.status_code}",
                code=code,
                retry_after=retry_after_seconds(response.headers),
            )
        return response


def _twilio_error_code(body: str) -> str | None:
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None
    return str(code) if code is not None else None


class TwilioWhatsApp:
    """WhatsApp through the official twilio SDK, async (`messages.create_async`)."""

    name = "twilio"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sender = "whatsapp:" + str(settings.twilio_whatsapp_number).removeprefix("whatsapp:")
        self.limiter = RateLimiter(settings.twilio_rate_per_second)
        self._client: TwilioClient | None = None
        self._http: _TwilioHttpClient | None = None
        if _loop_running():
            self._twilio()

    def _twilio(self) -> TwilioClient:
        if self._client is None:  # aiohttp needs the running loop: create on first use, then reuse
            self._http = _TwilioHttpClient(logger=_twilio_sdk_log)
            token = self.settings.twilio_auth_token
            self._client = TwilioClient(
                self.settings.twilio_account_sid,
                token.get_secret_value() if token else None,
                http_client=self._http,
            )
            if self.settings.twilio_api_base_url:
                self._client.api.base_url = self.settings.twilio_api_base_url.rstrip("/")
        return self._client

    async def send(self, message: Message) -> Sent:
        params: dict[str, Any] = {"to": f"whatsapp:{message.recipient}", "from_": self.sender}
        if message.content_sid:
            params["content_sid"] = message.content_sid
            params["content_variables"] = json.dumps(message.content_variables or {})
        else:
            params["body"] = message.text
        if self.settings.twilio_status_callback_url:
            params["status_callback"] = self.settings.twilio_status_callback_url
        client = self._twilio()
        await self.limiter.acquire()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.provider_timeout_seconds):
                created = await client.messages.create_async(**params)
        except TimeoutError:
            raise TransientDeliveryError("twilio: timed out", code="timeout") from None
        except TwilioRestException as exc:  # 4xx that retrying cannot fix (21211, 63003, 21610...)
            raise PermanentDeliveryError(f"twilio: {exc.msg}", code=str(exc.code or exc.status)) from None
        finally:
            METRICS.provider_latency.labels(self.name).observe(time.perf_counter() - started)
        return Sent("sent", created.sid)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = self._client = None


class _PooledResendClient(AsyncHTTPClient):
    """resend's async HTTP client on ONE persistent aiohttp session.

    The stock client opens an httpx client per call (a new TLS context and connection each
    time); httpx's own pool also costs several times aiohttp's CPU per request.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session: aiohttp.ClientSession | None = None
        if _loop_running():
            self._open()

    def _open(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=self.timeout)
        return self.session

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        json: Any = None,
        files: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
    ) -> tuple[bytes, int, Mapping[str, str]]:
        # Connection errors propagate: the SDK reports them as a 500, which retries. A timeout is
        # named as one (the SDK would call it "HttpClientError").
        try:
            async with self._open().request(
                method, url, headers=dict(headers), json=json, data=data
            ) as response:
                return await response.read(), response.status, response.headers
        except TimeoutError:
            raise resend.exceptions.ResendError(
                code=504, error_type="timeout", message="timed out", suggested_action="retry"
            ) from None

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


def _loop_running() -> bool:
    """Create HTTP sessions up front when a loop runs (the daemon), so the first message
    does not pay for them; otherwise on first use."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class ResendEmail:
    """Email through the official resend SDK, async (`Emails.send_async`), with an Idempotency-Key."""

    name = "resend"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limiter = RateLimiter(settings.resend_rate_per_second)
        self.http = _PooledResendClient(settings.provider_timeout_seconds)
        key = settings.resend_api_key
        resend.api_key = key.get_secret_value() if key else None
        # resend reads RESEND_API_URL only at import; the settings are the truth.
        resend.api_url = (settings.resend_api_url or "https://api.resend.com").rstrip("/")
        resend.default_async_http_client = self.http

    async def send(self, message: Message) -> Sent:
        params: dict[str, Any] = {
            "from": self.settings.from_email,
            "to": [message.recipient],
            "subject": message.subject or "",
            "html": message.html or "",
            "text": message.text,
        }
        if message.reply_to:
            params["reply_to"] = message.reply_to
        await self.limiter.acquire()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.provider_timeout_seconds):
                answer = await resend.Emails.send_async(
                    params,  # type: ignore[arg-type]
                    options={"idempotency_key": message.idempotency_key},
                )
        except TimeoutError:
            raise TransientDeliveryError("resend: timed out", code="timeout") from None
        except resend.exceptions.ResendError as exc:
            raise _resend_error(exc) from None
        finally:
            METRICS.provider_latency.labels(self.name).observe(time.perf_counter() - started)
        return Sent("sent", str(answer["id"]))

    async def close(self) -> None:
        await self.http.aclose()


def _resend_error(exc: resend.exceptions.ResendError) -> Exception:
    """429 and 5xx (and the SDK's wrapped connection errors, reported as 500) retry; 4xx fail."""
    try:
        status = int(exc.code)
    except (TypeError, ValueError):
        status = 500
    code = str(exc.error_type or status)
    if status == 429 or status >= 500:
        message = "resend: timed out" if code == "timeout" else f"resend: {code}"
        return TransientDeliveryError(message, code=code, retry_after=retry_after_seconds(exc.headers))
    return PermanentDeliveryError(f"resend: {exc.message}", code=code)


class ConsoleTransport:
    """No credentials: one masked structured log line per message; the ledger says `simulated`."""

    name = "console"

    def __init__(self, channel: str) -> None:
        self.channel = channel

    async def send(self, message: Message) -> Sent:
        text = message.text
        if message.secret:
            text = text.replace(message.secret, "******")
        log.info(
            "message.simulated",
            channel=self.channel,
            to=message.recipient,
            template=message.template,
            role=message.role,
            subject=message.subject,
            body=text,
        )
        return Sent("simulated")

    async def close(self) -> None:
        return None


class NullTransport:
    """Accept and drop (ledger `simulated`): measures the pipeline without any provider."""

    name = "null"

    async def send(self, message: Message) -> Sent:
        return Sent("simulated")

    async def close(self) -> None:
        return None


class InAppNotifications:
    """Rows in the app's `notifications` table; the row id is derived from the message so a
    redelivery after a crash between insert and ledger write cannot add a second row."""

    name = "in_app"

    def __init__(self, pool: AsyncConnectionPool, insert_sql: str) -> None:
        self.pool = pool
        self.insert_sql = insert_sql

    async def send(self, message: Message) -> Sent:
        meta = message.meta or {}
        row_id = uuid.uuid5(_IN_APP_NAMESPACE, message.idempotency_key)
        try:
            async with self.pool.connection() as conn:
                await conn.execute(
                    self.insert_sql,
                    {
                        "id": row_id,
                        "recipient_type": meta.get("recipient_type"),
                        "recipient_id": meta.get("recipient_id"),
                        "booking_id": meta.get("booking_id"),
                        "type": meta.get("type"),
                        "title": message.subject or "",
                        "message": message.text,
                    },
                )
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            # The row itself is refused (a constraint, a bad value): the same row never fits.
            raise PermanentDeliveryError(_database_error(exc), code=exc.sqlstate or "database") from None
        except psycopg.Error as exc:  # connection lost, pool exhausted, table missing: try again later
            raise TransientDeliveryError(_database_error(exc), code=exc.sqlstate or "database") from None
        return Sent("sent", str(row_id))

    async def close(self) -> None:
        return None


def _database_error(exc: psycopg.Error) -> str:
    """The error's first line only: a constraint's DETAIL would quote the row (names, messages)."""
    return f"in_app: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def build_transports(settings: Settings, pool: AsyncConnectionPool, insert_sql: str) -> dict[str, Transport]:
    """One transport per channel, chosen by MESSAGE_TRANSPORT and which credentials are set."""
    whatsapp: Transport
    email: Transport
    if settings.message_transport == "null":
        whatsapp = email = NullTransport()
    else:
        auto = settings.message_transport == "auto"
        whatsapp = (
            TwilioWhatsApp(settings) if auto and settings.twilio_configured else ConsoleTransport("whatsapp")
        )
        email = ResendEmail(settings) if auto and settings.resend_configured else ConsoleTransport("email")
    return {"whatsapp": whatsapp, "email": email, "in_app": InAppNotifications(pool, insert_sql)}
