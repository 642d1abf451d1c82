"""An event's messages rendered again, by the handlers' own code, without sending anything.

The router's composition step runs as it does in the claim loop (same data query, same
`compose_event`, same routing table and templates); its messages are shown instead of being
awaited (sent), and what it refuses is counted nowhere. The data is today's
(a booking edited since reads as edited), which the page says.

What is shown passes through the logs' redaction: addresses and phone numbers masked, and an
OTP email's code replaced by `***` wherever it occurs, since the code is the message's `secret`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from core.redaction import REDACTED, mask_text
from core.settings import Settings
from handlers.contract import DeliveryRecord, Event, PermanentDeliveryError
from handlers.delivery import DeliveryScope, Dispatcher, Message
from handlers.router import CONTEXTS, NotificationRouter, compose_event
from listener.http.console.masking import mask_recipient

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PreviewMessage:
    channel: str
    role: str | None
    template: str | None
    recipient: str
    subject: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Preview:
    messages: list[PreviewMessage]
    #: Why nothing could be rendered (no data any more, not a message kind, ...), else None.
    reason: str | None = None


class _UncountedScope(DeliveryScope):
    """A delivery scope whose refusals (opted out, no address) are neither counted nor logged."""

    def record(self, record: DeliveryRecord, **log_context: Any) -> DeliveryRecord:
        return record  # not counted: a preview delivers nothing


class _DataLoader(NotificationRouter):
    """The router's `prepare()` (one query for an event's booking, parties, OTP, ...) without
    the router's transports, which a preview must not open."""

    def __init__(self, pool: AsyncConnectionPool) -> None:  # no super(): no transports
        self.pool = pool


class Previewer:
    def __init__(self, settings: Settings, pool: AsyncConnectionPool) -> None:
        self._dispatcher = Dispatcher(settings, transports={})
        self._loader = _DataLoader(pool)

    async def render(self, row: dict[str, Any]) -> Preview:
        """The messages of the event `row` (a worker.events row), rendered from today's data."""
        if row["kind"] not in CONTEXTS:
            return Preview([], f"{row['kind']} sends no message")
        event = Event(
            row["id"],
            row["kind"],
            row["subject_id"],
            row["payload"],
            row["attempts"],
            row["expires_at"],
            row["created_at"],
        )
        data = (await self._loader.prepare([event])).get(event.id)
        if data is None:
            return Preview([], "its data could not be read")
        scope = _UncountedScope(self._dispatcher, event.id)
        try:
            # The whole message set, not only what the ledger lacks.
            outgoing = compose_event(scope, event, dataclasses.replace(data, ledger=frozenset()))
        except PermanentDeliveryError as exc:
            return Preview([], mask_text(str(exc)))
        except Exception as exc:  # a row the templates cannot take must not break the page
            log.warning("console.preview_failed", event_id=event.id, error=type(exc).__name__)
            return Preview([], f"rendering failed ({type(exc).__name__})")
        if outgoing is None or not outgoing.messages:
            return Preview([], "no message would be sent now (skipped or no recipient)")
        return Preview([_shown(message) for message in outgoing.messages])


def _shown(message: Message) -> PreviewMessage:
    def clean(text: str | None) -> str | None:
        if text is None:
            return None
        if message.secret:
            text = text.replace(message.secret, REDACTED)
        return mask_text(text)

    return PreviewMessage(
        channel=message.channel,
        role=message.role,
        template=message.template,
        recipient=mask_recipient(message.recipient),
        subject=clean(message.subject),
        text=clean(message.text) or "",
    )
