"""The checks in front of every console endpoint: open at all, signed in, CSRF; and the
response headers every console page carries."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from listener.http.console.app import Console

PREFIX = "/console"
SESSION_COOKIE = "fw_console_session"
#: The sign-in form's double-submit CSRF token (there is no session yet to bind one to).
LOGIN_COOKIE = "fw_console_login"

Handler = Callable[[Request, "Console", str], Awaitable[Response]]

_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # Search URLs may hold a full address: never send them on as a referrer.
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
]


class SecurityHeaders:
    """ASGI middleware: the headers above on every console response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def console_of(request: Request) -> Console:
    return request.app.state.console


def closed_response() -> Response:
    return PlainTextResponse(
        "The console is closed: set CONSOLE_PASSWORD_HASH (or CONSOLE_PASSWORD) to open it.", 503
    )


def is_https(request: Request) -> bool:
    """Behind a platform's router the worker sees plain http: trust WEBHOOK_BASE_URL's scheme and
    the router's X-Forwarded-Proto, so the session cookie is `Secure` whenever the browser uses https."""
    base = console_of(request).settings.webhook_base_url or ""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return base.startswith("https://") or forwarded == "https" or request.url.scheme == "https"


def client_of(request: Request) -> str:
    """The address the rate limit counts: the last X-Forwarded-For hop (added by the router in
    front of the worker, so a client cannot choose it), else the peer."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[-1].strip()
    return request.client.host if request.client else "unknown"


def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page for signed-in operators: a browser without a session is sent to sign in (GET of a
    full page), anything else without one gets 401. State-changing requests (POST) must carry
    the session's CSRF token in the form field `csrf`, else 403."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        console = console_of(request)
        if console.auth.closed:
            return closed_response()
        session = console.auth.session_of(request.cookies.get(SESSION_COOKIE))
        if session is None:
            if request.method == "GET" and not request.url.path.endswith("/live"):
                return RedirectResponse(f"{PREFIX}/login?next={request.url.path}", 303)
            return PlainTextResponse("sign in first", 401)
        if request.method == "POST":
            form = await request.form()
            if not console.auth.csrf_ok(session, form.get("csrf")):  # type: ignore[arg-type]
                return PlainTextResponse("invalid or missing CSRF token", 403)
        return await handler(request, console, session)

    return endpoint


def render(
    request: Request, name: str, session: str | None = None, status_code: int = 200, **context: Any
) -> Response:
    """A console template rendered with `context`; signed-in pages get their CSRF token (the
    sign-out form is on every page)."""
    console = console_of(request)
    if session is not None:
        context |= {"csrf": console.auth.csrf_token(session), "session": session}
    return console.templates.TemplateResponse(request, name, context, status_code=status_code)
