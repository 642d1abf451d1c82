"""Where messages leave the process: the console, nowhere (null), in-app rows, and the choice
of transport per channel.

The provider transports live in `twilio_transport` and `resend_transport` and are imported only
when their credentials are set: a worker without Twilio does not carry the twilio SDK's ~100
modules. Both hold ONE long-lived HTTP client, a rate limit shared with every other worker
through the database (`rate_limit`), and map the provider's
errors to `PermanentDeliveryError` / `TransientDeliveryError` at their edge.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

import psycopg
import structlog

from core.redaction import error_first_line, mask_text
from handlers.circuit import CircuitBreaker
from handlers.contract import PermanentDeliveryError, TransientDeliveryError
from handlers.delivery import Message, Sent, Transport, masked_recipient
from handlers.provider_guard import ProviderGuard
from handlers.rate_limit import SharedRateLimiter

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from core.settings import Settings

log = structlog.get_logger(__name__)

#: Namespace of in-app row ids: one row per (event, recipient), however often it is retried.
_IN_APP_NAMESPACE = uuid.UUID("6f1f4d8e-52a4-4c0e-9d55-3f0e7f3b7a10")


class ConsoleTransport:
    """No credentials: each message is shown instead of sent; the ledger says `simulated`.

    With JSON logs it is one masked `message.simulated` line, for machines. With console logs
    (LOG_FORMAT=console, or the demo on a terminal) it is a block people read: the body on its
    own lines as the recipient would see it, masked by the same rules as the logs.
    """

    name = "console"

    def __init__(self, channel: str, readable: bool = False) -> None:
        self.channel = channel
        self.readable = readable

    async def send(self, message: Message) -> Sent:
        text = message.text
        if message.secret:
            text = text.replace(message.secret, "******")
        if self.readable:
            # Where the log lines go too (the console renderer's stream), in the same order.
            sys.stdout.write(message_block(self.channel, message, text))
            sys.stdout.flush()
        else:
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


#: Width the console blocks wrap their body lines to, so a paragraph stays readable in a terminal.
BLOCK_WIDTH = 88


def message_block(channel: str, message: Message, text: str) -> str:
    """A message as people read it: a header (channel, role, masked recipient, template), the
    email's subject, then the body on its own indented lines; every line masked like a log line."""
    header = f"── {channel} to {message.role or 'recipient'} {masked_recipient(message.recipient)}"
    if message.template:
        header += f" · {message.template}"
    lines = [header]
    if message.subject is not None:
        lines.append(f"   Subject: {mask_text(message.subject)}")
    lines.append("")
    for line in mask_text(text).splitlines():
        wrapped = textwrap.wrap(line, BLOCK_WIDTH, break_long_words=False, break_on_hyphens=False)
        lines.extend(f"   {part}".rstrip() for part in wrapped or [""])
    return "\n".join(lines) + "\n\n"


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
    """The error's first line only (`error_first_line`), after its type."""
    return f"in_app: {type(exc).__name__}: {error_first_line(exc)}"


def build_transports(settings: Settings, pool: AsyncConnectionPool, insert_sql: str) -> dict[str, Transport]:
    """One transport per channel, chosen by MESSAGE_TRANSPORT and which credentials are set."""
    in_app = InAppNotifications(pool, insert_sql)
    if settings.message_transport == "null":
        return {"whatsapp": NullTransport(), "email": NullTransport(), "in_app": in_app}
    return {"whatsapp": _whatsapp(settings, pool), "email": _email(settings, pool), "in_app": in_app}


def _whatsapp(settings: Settings, pool: AsyncConnectionPool) -> Transport:
    if settings.message_transport == "auto" and settings.twilio_configured:
        from handlers.twilio_transport import TwilioWhatsApp

        limiter = SharedRateLimiter(pool, "twilio", settings.twilio_rate_per_second, settings)
        return _guarded(TwilioWhatsApp(settings), limiter, settings)
    return ConsoleTransport("whatsapp", readable=settings.log_format == "console")


def _email(settings: Settings, pool: AsyncConnectionPool) -> Transport:
    if settings.message_transport == "auto" and settings.resend_configured:
        from handlers.resend_transport import ResendEmail

        limiter = SharedRateLimiter(pool, "resend", settings.resend_rate_per_second, settings)
        return _guarded(ResendEmail(settings), limiter, settings)
    return ConsoleTransport("email", readable=settings.log_format == "console")


def _guarded(transport: Transport, limiter: SharedRateLimiter, settings: Settings) -> ProviderGuard:
    breaker = CircuitBreaker(
        transport.name,
        failure_threshold=settings.circuit_failure_threshold,
        open_seconds=settings.circuit_open_seconds,
        max_open_seconds=settings.circuit_max_open_seconds,
        probe_wait=settings.provider_timeout_seconds,
    )
    return ProviderGuard(transport, breaker, limiter)


def provider_guards(transports: Mapping[str, Transport]) -> list[ProviderGuard]:
    """The guards of the provider transports (none for console, null and in-app)."""
    return [t for t in transports.values() if isinstance(t, ProviderGuard)]
