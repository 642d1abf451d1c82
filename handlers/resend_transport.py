"""Email through the official resend SDK (async), imported only when Resend is configured.

The transport holds ONE persistent aiohttp session for the SDK, the shared rate limit, sends
an Idempotency-Key with every email, and maps Resend's answers to our error types at the edge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import resend
from resend.http_client_async import AsyncHTTPClient

from core.metrics import METRICS
from handlers.contract import PermanentDeliveryError, TransientDeliveryError
from handlers.delivery import Message, Sent
from handlers.provider_http import loop_running, provider_connection_limit, retry_after_seconds

if TYPE_CHECKING:
    from core.settings import Settings

class _PooledResendClient(AsyncHTTPClient):
    """resend's async HTTP client on ONE persistent aiohttp session.

    The stock client opens an httpx client per call (a new TLS context and connection each
    time); httpx's own pool also costs several times aiohttp's CPU per request. The session may
    open `connection_limit` connections (aiohttp's default of 100 would queue behind a slow Resend).
    """

    def __init__(self, timeout: float, connection_limit: int) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.connection_limit = connection_limit
        self.session: aiohttp.ClientSession | None = None
        if loop_running():
            self._open()

    def _open(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=self.connection_limit)
            self.session = aiohttp.ClientSession(timeout=self.timeout, connector=connector)
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


class ResendEmail:
    """Email through the official resend SDK, async (`Emails.send_async`), with an Idempotency-Key."""

    name = "resend"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http = _PooledResendClient(
            settings.provider_timeout_seconds, provider_connection_limit(settings)
        )
        resend.api_key = settings.resend_api_key
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


#: 4xx answers a later attempt can get past: 409 while a request with the same Idempotency-Key
#: is still in flight (e.g. a timed-out attempt). Its sibling `invalid_idempotent_request` (same
#: key, different body) stays permanent: resending the same thing cannot change that answer.
_RETRYABLE_CLIENT_ERRORS = frozenset({"concurrent_idempotent_requests"})


def _resend_error(exc: resend.exceptions.ResendError) -> Exception:
    """429, 5xx (and the SDK's wrapped connection errors, reported as 500) and a concurrent
    idempotent request retry; other 4xx fail."""
    try:
        status = int(exc.code)
    except (TypeError, ValueError):
        status = 500
    code = str(exc.error_type or status)
    if status == 429 or status >= 500 or code in _RETRYABLE_CLIENT_ERRORS:
        message = "resend: timed out" if code == "timeout" else f"resend: {code}"
        return TransientDeliveryError(
            message, code=code, retry_after=retry_after_seconds(exc.headers), throttled=status == 429
        )
    return PermanentDeliveryError(f"resend: {exc.message}", code=code)
