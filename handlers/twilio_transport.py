"""WhatsApp through the official twilio SDK (async), imported only when Twilio is configured.

The transport holds ONE long-lived SDK `Client` on one aiohttp session, the shared rate
limit, and maps Twilio's answers to Permanent/TransientDeliveryError right here at the edge.

Messages are created with the SDK's own request path (`Client.request_async`: its
authentication, headers, edge/region handling and HTTP client) on the Messages resource,
rather than through `client.messages`: that attribute imports the whole generated 2010 API
(about a hundred modules, 7 MB of a worker's memory) to reach one POST.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client as TwilioClient

from core.metrics import METRICS
from handlers.contract import PermanentDeliveryError, TransientDeliveryError
from handlers.delivery import Message, Sent
from handlers.provider_http import loop_running, provider_connection_limit, retry_after_seconds
from handlers.values import template_variable

if TYPE_CHECKING:
    from core.settings import Settings

#: The SDK logs every request header at INFO; keep only its warnings.
_twilio_sdk_log = logging.getLogger("handlers.twilio_transport.sdk")
_twilio_sdk_log.setLevel(logging.WARNING)


class _TwilioHttpClient(AsyncTwilioHttpClient):
    """The SDK's aiohttp client on one session sized for the worker's concurrency, raising our
    error types for answers worth retrying."""

    def __init__(self, connection_limit: int) -> None:
        # The SDK's own session has aiohttp's default limit of 100 connections: ours replaces it.
        super().__init__(pool_connections=False, logger=_twilio_sdk_log)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connection_limit))

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
                throttled=response.status_code == 429,
            )
        return response


def _json(body: str) -> dict[str, Any]:
    """A Twilio answer's JSON object (an empty one when a proxy answered with something else)."""
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _twilio_error_code(body: str) -> str | None:
    code = _json(body).get("code")
    return str(code) if code is not None else None


#: Twilio's REST host; TWILIO_API_BASE_URL replaces it (a local fake, a proxy).
TWILIO_API = "https://api.twilio.com"


class TwilioWhatsApp:
    """WhatsApp through the official twilio SDK, async (`Client.request_async`)."""

    name = "twilio"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sender = "whatsapp:" + str(settings.twilio_whatsapp_number).removeprefix("whatsapp:")
        base = (settings.twilio_api_base_url or TWILIO_API).rstrip("/")
        self.messages_url = f"{base}/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json"
        self._client: TwilioClient | None = None
        self._http: _TwilioHttpClient | None = None
        if loop_running():
            self._twilio()

    def _twilio(self) -> TwilioClient:
        if self._client is None:  # aiohttp needs the running loop: create on first use, then reuse
            self._http = _TwilioHttpClient(provider_connection_limit(self.settings))
            self._client = TwilioClient(
                self.settings.twilio_account_sid, self.settings.twilio_auth_token, http_client=self._http
            )
        return self._client

    async def send(self, message: Message) -> Sent:
        form: dict[str, object] = {"To": f"whatsapp:{message.recipient}", "From": self.sender}
        if message.content_sid:
            form["ContentSid"] = message.content_sid
            # Here, at Twilio's edge, so that no path (routed or a direct send) can exceed its limits.
            variables = {
                key: template_variable(value) for key, value in (message.content_variables or {}).items()
            }
            form["ContentVariables"] = json.dumps(variables)
        else:
            form["Body"] = message.text
        if self.settings.twilio_status_callback_url:
            form["StatusCallback"] = self.settings.twilio_status_callback_url
        client = self._twilio()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.provider_timeout_seconds):
                response = await client.request_async("POST", self.messages_url, data=form)
        except TimeoutError:
            raise TransientDeliveryError("twilio: timed out", code="timeout") from None
        finally:
            METRICS.provider_latency.labels(self.name).observe(time.perf_counter() - started)
        answer = _json(response.text)
        if response.status_code >= 400:  # 429 and 5xx were raised as transient by the HTTP client
            # 4xx that retrying cannot fix: 21211 invalid number, 63003, 63014, 21610, ...
            code = str(answer.get("code") or response.status_code)
            raise PermanentDeliveryError(f"twilio: {answer.get('message', 'rejected')}", code=code)
        return Sent("sent", str(answer.get("sid")))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = self._client = None
