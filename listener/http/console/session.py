"""Signing in and out of the console. Every attempt is logged and written to audit_logs
(category `security`) with the session id; failures are rate-limited per client."""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING

import structlog
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from listener.http.console.guard import (
    LOGIN_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    client_of,
    closed_response,
    console_of,
    is_https,
    render,
    signed_in,
)

if TYPE_CHECKING:
    from listener.http.console.app import Console

log = structlog.get_logger(__name__)


def _next_page(value: object) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    target = str(value or "")
    if target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/"


def _form(request: Request, status_code: int = 200, error: str | None = None) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status_code=status_code,
        login_token=token,
        error=error,
        next=_next_page(request.query_params.get("next")),
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=3600,
        path=PREFIX,
        httponly=True,
        secure=is_https(request),
        samesite="lax",
    )
    return response


async def login_form(request: Request) -> Response:
    if console_of(request).auth.closed:
        return closed_response()
    return _form(request)


async def login(request: Request) -> Response:
    console = console_of(request)
    if console.auth.closed:
        return closed_response()
    client = client_of(request)
    wait = console.limiter.retry_after(client)
    if wait > 0:
        log.warning("console.sign_in_limited", client=client, retry_after=round(wait))
        return PlainTextResponse(
            "Too many failed sign-ins; try again later.", 429, {"Retry-After": str(math.ceil(wait))}
        )
    form = await request.form()
    token = request.cookies.get(LOGIN_COOKIE)
    if not token or not secrets.compare_digest(token, str(form.get("csrf", ""))):
        return PlainTextResponse("invalid or missing CSRF token", 403)
    if not console.auth.password_ok(str(form.get("password", ""))):
        console.limiter.failed(client)
        log.warning("console.sign_in_failed", client=client)
        await console.store.audit_sign_in("console.sign_in_failed", {"client": client})
        return _form(request, 401, "Wrong password.")
    console.limiter.succeeded(client)
    session_id, cookie = console.auth.new_session()
    log.info("console.signed_in", session=session_id, client=client)
    await console.store.audit_sign_in("console.sign_in", {"session": session_id, "client": client})
    response = RedirectResponse(_next_page(form.get("next")), 303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=console.auth.session_seconds,
        path=PREFIX,
        httponly=True,
        secure=is_https(request),
        samesite="lax",
    )
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    return response


@signed_in
async def logout(request: Request, console: Console, session: str) -> Response:
    log.info("console.signed_out", session=session)
    await console.store.audit_sign_in("console.sign_out", {"session": session})
    response = RedirectResponse(f"{PREFIX}/login", 303)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response
