"""`flavor-worker check`: everything that would stop the worker from doing its job, one line each."""

from __future__ import annotations

import contextlib
import uuid
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from core.settings import Settings
from listener.migrate import pending_migrations

#: Supabase's transaction-mode pooler: it cannot hold a session, so LISTEN never hears anything.
_TRANSACTION_POOLER_PORT = "6543"


def run_checks(settings: Settings) -> list[str]:
    """Return the problems found (empty when all is well)."""
    problems = _settings_problems(settings)
    if not settings.database_url:
        problems.append("DATABASE_URL is not set (only the embedded demo database would be used)")
        return problems
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5, autocommit=True) as conn:
            missing = pending_migrations(conn)
            if missing:
                names = ", ".join(m.path.name for m in missing)
                problems.append(f"schema is behind: {names} not applied (run `flavor-worker migrate`)")
            problems.extend(_listen_problems(settings.database_url, conn))
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        problems.append(f"database unreachable through DATABASE_URL: {first_line}")
    return problems


def _settings_problems(settings: Settings) -> list[str]:
    problems = []
    twilio = {
        "TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
        "TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
        "TWILIO_WHATSAPP_NUMBER": settings.twilio_whatsapp_number,
    }
    if any(twilio.values()) and not all(twilio.values()):
        missing = ", ".join(name for name, value in twilio.items() if not value)
        problems.append(f"WhatsApp is half configured: {missing} missing (messages would only be simulated)")
    if settings.twilio_configured and not settings.admin_whatsapp:
        problems.append("ADMIN_WHATSAPP is not set: admin WhatsApp alerts cannot be sent")
    if settings.resend_configured and not settings.admin_email:
        problems.append("ADMIN_EMAIL is not set: admin emails cannot be sent")
    if not settings.cron_secret:
        if settings.port:
            problems.append("CRON_SECRET is not set: the /api/cron endpoints answer 503")
    elif len(settings.cron_secret) < 32:
        problems.append("CRON_SECRET is too short: use at least 32 random characters")
    problems.extend(_webhook_problems(settings))
    return problems


def _webhook_problems(settings: Settings) -> list[str]:
    """Twilio signs the public URL; webhook signatures are checked against WEBHOOK_BASE_URL + path."""
    problems = []
    if settings.webhook_base_url:
        url = urlsplit(settings.webhook_base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            problems.append("WEBHOOK_BASE_URL must be an absolute URL such as https://worker.example.com")
        elif url.query or url.fragment:
            problems.append("WEBHOOK_BASE_URL must not have a query or fragment (Twilio signs the exact URL)")
    return problems


def _listen_problems(conninfo: str, conn: psycopg.Connection) -> list[str]:
    """Send ourselves a NOTIFY through a second connection and see whether it arrives."""
    hint = ""
    if str(conninfo_to_dict(conninfo).get("port", "")) == _TRANSACTION_POOLER_PORT:
        hint = (
            " (port 6543 is Supabase's transaction pooler, which cannot LISTEN: use the direct"
            " connection or the session pooler on port 5432)"
        )
    channel = f"flavor_check_{uuid.uuid4().hex[:8]}"
    try:
        conn.execute(f"LISTEN {channel}")
        with psycopg.connect(conninfo, connect_timeout=5, autocommit=True) as other:
            other.execute("SELECT pg_notify(%s, 'ping')", (channel,))
        heard = any(True for _ in conn.notifies(timeout=3.0, stop_after=1))
    except psycopg.Error as exc:
        return [f"LISTEN/NOTIFY failed through DATABASE_URL: {exc}{hint}"]
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute(f"UNLISTEN {channel}")
    return [] if heard else [f"LISTEN/NOTIFY does not work through DATABASE_URL{hint}"]
