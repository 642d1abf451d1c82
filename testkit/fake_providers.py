"""Local stand-ins for the Twilio Messages API and the Resend Emails API, for tests and benchmarks.

They answer like the real APIs (Twilio: 201 message JSON, 400 code 21211, 400 code 21617 for a
Body over 1,600 characters, 429 code 20429 with Retry-After, 500; Resend: 200 with an id, 422
validation_error, 429 rate_limit_exceeded), can be scripted to fail, throttle or stall, and
record every request with its arrival time.

One server serves both: point TWILIO_API_BASE_URL and RESEND_API_URL at `fake.url`.

    fake = FakeProviders().start()          # in a background thread of this process
    fake.queue("twilio", Reply(429, retry_after=1))
    ...; fake.stop()

or as a process: `python -m testkit.fake_providers --port 8099 [--latency 0.15]`, scripted over
HTTP: GET /_fake/requests, POST /_fake/reset, POST /_fake/script with a JSON body
{"provider": "twilio", "queue": [{"status": 429}], "outage": {"status": 500} | null,
 "reject": {"whatsapp:+61400000009": {"status": 400, "code": 21211}}, "latency": 0.15}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from typing import Any, Literal

from aiohttp import web

Provider = Literal["twilio", "resend"]

_TWILIO_ERRORS = {
    400: (21211, "The 'To' number is not a valid phone number."),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
}
_RESEND_ERRORS = {
    422: ("validation_error", "Invalid `to` field."),
    429: ("rate_limit_exceeded", "Too many requests. You can only make 2 requests per second."),
    500: ("application_error", "An unexpected error occurred."),
}


@dataclass(frozen=True, slots=True)
class Reply:
    """A scripted answer: HTTP `status` (2xx = success), provider error `code`, Retry-After, delay."""

    status: int = 200
    code: int | str | None = None
    retry_after: float | None = None
    delay: float = 0.0


#: Twilio refuses a longer Body for good (counted here in UTF-16 code units, the stricter reading).
TWILIO_MAX_BODY = 1600
_BODY_TOO_LONG = Reply(400, 21617)
_TWILIO_MESSAGES = {"21617": "The concatenated message body exceeds the 1600 character limit."}


@dataclass(slots=True)
class Recorded:
    """One request as the fake received it."""

    provider: Provider
    time: float
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int = 0
    response: dict[str, Any] = field(default_factory=dict)


class _Script:
    """What one provider answers next."""

    def __init__(self) -> None:
        self.queue: deque[Reply] = deque()
        self.outage: Reply | None = None
        self.reject: dict[str, Reply] = {}
        self.latency = 0.0

    def next_reply(self, recipient: str) -> Reply | None:
        if recipient in self.reject:
            return self.reject[recipient]
        if self.queue:
            return self.queue.popleft()
        return self.outage


class FakeProviders:
    """The fake Twilio + Resend server; start it in a thread (`start`) or in a loop (`serve`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.requests: list[Recorded] = []
        #: (provider, recipient, time) of every request as it arrives, before it is answered:
        #: what was in flight at a given moment, and which recipient a stalled request is for.
        self.arrivals: list[tuple[Provider, str, float]] = []
        self.scripts: dict[Provider, _Script] = {"twilio": _Script(), "resend": _Script()}
        for script in self.scripts.values():
            script.latency = latency
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ scripting
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def queue(self, provider: Provider, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order, then as usual."""
        self.scripts[provider].queue.extend(replies)

    def outage(self, provider: Provider, reply: Reply | None) -> None:
        """Answer every request with `reply` until called again with None."""
        self.scripts[provider].outage = reply

    def reject(self, provider: Provider, recipient: str, reply: Reply) -> None:
        """Always answer `reply` for one recipient ("whatsapp:+61..." or an email address)."""
        self.scripts[provider].reject[recipient] = reply

    def set_latency(self, seconds: float, provider: Provider | None = None) -> None:
        for name in [provider] if provider else list(self.scripts):
            self.scripts[name].latency = seconds

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.arrivals.clear()
        for name in list(self.scripts):
            self.scripts[name] = _Script()

    def received(self, provider: Provider, *, ok_only: bool = True) -> list[Recorded]:
        """The requests `provider` got (by default only those it accepted), in arrival order."""
        with self._lock:
            items = list(self.requests)
        return [r for r in items if r.provider == provider and (not ok_only or r.status < 300)]

    # ------------------------------------------------------------------ HTTP
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._twilio)
        app.router.add_post("/emails", self._resend)
        app.router.add_get("/_fake/requests", self._control_requests)
        app.router.add_post("/_fake/reset", self._control_reset)
        app.router.add_post("/_fake/script", self._control_script)
        return app

    async def _twilio(self, request: web.Request) -> web.Response:
        arrived = time.time()
        form = dict(await request.post())
        body = {k: str(v) for k, v in form.items()}
        script = self.scripts["twilio"]
        self._arrived("twilio", body.get("To", ""), arrived)
        reply = script.next_reply(body.get("To", ""))
        if len(body.get("Body", "").encode("utf-16-le")) > 2 * TWILIO_MAX_BODY:
            reply = _BODY_TOO_LONG
        await self._wait(script, reply)
        if reply is None or reply.status < 300:
            sid = "SM" + uuid.uuid4().hex
            payload: dict[str, Any] = {
                "sid": sid,
                "account_sid": request.match_info["sid"],
                "to": body.get("To"),
                "from": body.get("From"),
                "body": body.get("Body", ""),
                "status": "queued",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "num_segments": "1",
                "num_media": "0",
                "price": None,
                "price_unit": "USD",
                "error_code": None,
                "error_message": None,
                "messaging_service_sid": None,
                "date_created": formatdate(arrived, usegmt=True),
                "date_updated": formatdate(arrived, usegmt=True),
                "date_sent": None,
                "uri": f"/2010-04-01/Accounts/{request.match_info['sid']}/Messages/{sid}.json",
                "subresource_uris": {},
                "tags": None,
            }
            status = 201
        else:
            status = reply.status
            code, message = _TWILIO_ERRORS.get(status, (status * 100, "Error"))
            payload = {
                "code": reply.code or code,
                "message": _TWILIO_MESSAGES.get(str(reply.code), message),
                "status": status,
                "more_info": f"https://www.twilio.com/docs/errors/{reply.code or code}",
            }
        return self._answer("twilio", request, arrived, body, status, payload, reply)

    async def _resend(self, request: web.Request) -> web.Response:
        arrived = time.time()
        body = await request.json()
        script = self.scripts["resend"]
        to = body.get("to") or [""]
        recipient = to[0] if isinstance(to, list) else str(to)
        self._arrived("resend", recipient, arrived)
        reply = script.next_reply(recipient)
        await self._wait(script, reply)
        if reply is None or reply.status < 300:
            status, payload = 200, {"id": str(uuid.uuid4())}
        else:
            status = reply.status
            name, message = _RESEND_ERRORS.get(status, ("application_error", "Error"))
            payload = {"statusCode": status, "name": reply.code or name, "message": message}
        return self._answer("resend", request, arrived, body, status, payload, reply)

    def _arrived(self, provider: Provider, recipient: str, at: float) -> None:
        with self._lock:
            self.arrivals.append((provider, recipient, at))

    @staticmethod
    async def _wait(script: _Script, reply: Reply | None) -> None:
        delay = script.latency + (reply.delay if reply else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)

    def _answer(
        self,
        provider: Provider,
        request: web.Request,
        arrived: float,
        body: dict[str, Any],
        status: int,
        payload: dict[str, Any],
        reply: Reply | None,
    ) -> web.Response:
        record = Recorded(
            provider, arrived, request.method, request.path, dict(request.headers), body, status, payload
        )
        with self._lock:
            self.requests.append(record)
        headers = {}
        if reply is not None and reply.retry_after is not None and status >= 300:
            headers["Retry-After"] = str(
                int(reply.retry_after) if reply.retry_after >= 1 else reply.retry_after
            )
        return web.json_response(payload, status=status, headers=headers)

    async def _control_requests(self, request: web.Request) -> web.Response:
        with self._lock:
            items = [asdict(r) for r in self.requests]
        return web.json_response(items)

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _control_script(self, request: web.Request) -> web.Response:
        spec = await request.json()
        provider = spec["provider"]
        if "queue" in spec:
            self.queue(provider, *(Reply(**r) for r in spec["queue"]))
        if "outage" in spec:
            self.outage(provider, Reply(**spec["outage"]) if spec["outage"] else None)
        for recipient, reply in (spec.get("reject") or {}).items():
            self.reject(provider, recipient, Reply(**reply))
        if "latency" in spec:
            self.set_latency(float(spec["latency"]), provider)
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ running
    async def serve(self) -> None:
        """Serve in the running loop until `stop()`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=1024).start()
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    def start(self) -> FakeProviders:
        """Serve from a daemon thread of this process; returns once the port is bound."""
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.serve()), name="fake-providers", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake providers did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_env(url: str) -> dict[str, str]:
    """Environment that points a worker's real twilio and resend SDKs at a fake served at `url`."""
    return {
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "fake-provider-token",
        "TWILIO_WHATSAPP_NUMBER": "+14155238886",
        "ADMIN_WHATSAPP": "+61400000000",
        "TWILIO_API_BASE_URL": url,
        "RESEND_API_KEY": "re_fake_provider",
        "RESEND_API_URL": url,
        "ADMIN_EMAIL": "admin@flavor.example",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Twilio + Resend HTTP APIs for local runs.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    args = parser.parse_args()
    fake = FakeProviders(args.host, args.port, args.latency)
    print(f"fake providers on http://{args.host}:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(fake.serve())


if __name__ == "__main__":
    main()
