"""`flavor-worker check`: everything that would stop the worker from doing its job, one line each.

Problems (exit 1) are what would break the worker or lose messages; warnings are what works but
probably not as meant (an admin alert with no admin to go to, a misspelt variable). `run`
refuses to start on the same LISTEN diagnosis (`listen_problem`), so the two never disagree.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field

import psycopg

from core.redaction import mask_text
from core.settings import Settings
from handlers.contract import PermanentDeliveryError
from handlers.phones import to_e164
from listener.contract import contract_problems
from listener.migrate import applied_versions, discover_migrations, pending_migrations

#: How long the LISTEN probe waits for its own NOTIFY (it arrives in milliseconds when it works).
LISTEN_PROBE_SECONDS = 3.0


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def run_checks(settings: Settings) -> CheckReport:
    """Check the settings, then the database: reachable, migrated, data contract, LISTEN/NOTIFY."""
    report = CheckReport(_settings_problems(settings), _settings_warnings(settings))
    if not settings.database_url:
        report.problems.append("DATABASE_URL is not set (only the embedded demo database would be used)")
        return report
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5, autocommit=True) as conn:
            behind = schema_problems(conn)
            report.problems += behind + contract_problems(conn, migrated=not behind)
            report.warnings.extend(_schema_warnings(conn))
    except psycopg.OperationalError as exc:
        report.problems.append(f"database unreachable through DATABASE_URL: {_first_line(exc)}")
        return report
    variable = "LISTEN_DATABASE_URL" if settings.listen_database_url else "DATABASE_URL"
    problem = listen_problem(settings.session_database_url or settings.database_url, variable)
    if problem:
        report.problems.append(problem)
    return report


def schema_problems(conn: psycopg.Connection) -> list[str]:
    """The schema is behind the migrations this install ships (the only problem it can have)."""
    missing = pending_migrations(conn)
    if not missing:
        return []
    names = ", ".join(m.path.name for m in missing)
    return [f"schema is behind: {names} not applied (run `flavor-worker migrate`)"]


def _schema_warnings(conn: psycopg.Connection) -> list[str]:
    """A schema ahead of this install is fine (migrations never break the previous release), but
    this worker is the older one: say so."""
    ahead = sorted(applied_versions(conn) - {m.version for m in discover_migrations()})
    if not ahead:
        return []
    return [f"schema is ahead of this flavor-worker (migrations {', '.join(map(str, ahead))}): upgrade it"]


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
    region = settings.default_phone_region
    for name, number in (
        ("TWILIO_WHATSAPP_NUMBER", settings.twilio_whatsapp_number),
        ("ADMIN_WHATSAPP", settings.admin_whatsapp),
    ):
        try:
            if number:
                to_e164(number, region)
        except PermanentDeliveryError:
            problems.append(
                f"{name} is not a phone number (read in DEFAULT_PHONE_REGION {region}):"
                " every WhatsApp to or from it would fail"
            )
    if not settings.cron_secret:
        if settings.port:
            problems.append("CRON_SECRET is not set: the /api/cron endpoints answer 503")
    elif len(settings.cron_secret) < 32:
        problems.append("CRON_SECRET is too short: use at least 32 random characters")
    return problems


def _settings_warnings(settings: Settings) -> list[str]:
    """Admin alerts are not opt-out-able: without an admin address they go nowhere, silently."""
    warnings = []
    if not settings.admin_whatsapp:
        warnings.append("ADMIN_WHATSAPP is not set: admin WhatsApp alerts (bookings, deposits) go nowhere")
    if not settings.admin_email:
        warnings.append("ADMIN_EMAIL is not set: admin emails go nowhere")
    if settings.message_transport == "auto":
        if not settings.twilio_configured:
            warnings.append("Twilio is not configured: WhatsApp messages are only logged (simulated)")
        if not settings.resend_configured:
            warnings.append("RESEND_API_KEY is not set: emails are only logged (simulated)")
    return warnings


def listen_problem(conninfo: str, variable: str) -> str | None:
    """Send ourselves a NOTIFY through a second connection and see whether it arrives; None when
    it does. `variable` names the setting `conninfo` came from, for the diagnosis."""
    advice = (
        f"{variable} must be a session connection (the direct connection, or a session-mode pooler:"
        " Supabase's session pooler on port 5432)"
        if variable == "LISTEN_DATABASE_URL"
        else "if DATABASE_URL is a transaction pooler (such as Supabase's on port 6543), set"
        " LISTEN_DATABASE_URL to a session connection (the direct connection, or the session pooler"
        " on port 5432)"
    )
    channel = f"flavor_check_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(conninfo, connect_timeout=5, autocommit=True) as conn:
            try:
                conn.execute(f"LISTEN {channel}")
                with psycopg.connect(conninfo, connect_timeout=5, autocommit=True) as other:
                    other.execute("SELECT pg_notify(%s, 'ping')", (channel,))
                heard = any(True for _ in conn.notifies(timeout=LISTEN_PROBE_SECONDS, stop_after=1))
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f"UNLISTEN {channel}")
    except psycopg.Error as exc:
        return f"LISTEN/NOTIFY failed through {variable}: {_first_line(exc)}; {advice}"
    return None if heard else f"LISTEN/NOTIFY does not work through {variable}: {advice}"


def _first_line(exc: Exception) -> str:
    return mask_text((str(exc).strip().splitlines() or [type(exc).__name__])[0])
