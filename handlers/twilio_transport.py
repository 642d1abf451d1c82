"""WhatsApp through the official twilio SDK (async), imported only when Twilio is configured.

The transport holds ONE long-lived SDK client on one aiohttp session, a client-side rate limit,
and maps Twilio's answers to Permanent/TransientDeliveryError right here at the edge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client as TwilioClient

from handlers.contract import PermanentDeliveryError, TransientDeliveryError
from handlers.delivery import Message, Sent
from handlers.transports import RateLimiter, loop_running, retry_after_seconds
from listener.metrics import METRICS

if TYPE_CHECKING:
    from listener.settings import Settings

#: The SDK logs every request header at INFO; keep only its warnings.
_twilio_sdk_log = logging.getLogger("handlers.twilio_transport.sdk")
_twilio_sdk_log.setLevel(logging.WARNING)


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
        if loop_running():
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
