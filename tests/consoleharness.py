"""Signing in to the console over HTTP (httpx), as a browser would: the form's token, the cookie."""

from __future__ import annotations

import re

import httpx
import psycopg
from psycopg.rows import dict_row

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: str) -> str:
    match = _CSRF.search(page)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, password: str = PASSWORD, **headers: str) -> httpx.Response:
    """Post the sign-in form (with its token and its cookie) and return the answer, not followed.

    The form's cookie is sent explicitly: behind https (X-Forwarded-Proto) it is `Secure`, and
    httpx, talking plain http to the app, would keep it to itself like a browser would.
    """
    form = await client.get("/console/login", headers=headers)
    cookie = {"Cookie": f"fw_console_login={form.cookies['fw_console_login']}"}
    return await client.post(
        "/console/login", data={"csrf": csrf_of(form.text), "password": password}, headers=headers | cookie
    )


async def signed_in_csrf(client: httpx.AsyncClient) -> str:
    """Sign in and return the session's CSRF token (from the sign-out form on every page)."""
    answer = await sign_in(client)
    assert answer.status_code == 303, answer.text
    return csrf_of((await client.get("/console/")).text)


def audit_rows(db: psycopg.Connection) -> list[dict]:
    cur = db.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT action, category, entity_type, entity_id, actor, details FROM audit_logs"
        " WHERE actor = 'console' ORDER BY created_at, action"
    ).fetchall()
