"""The small interface between the claim loop (`listener`) and what handles events.

The claim loop hands a batch of `Event`s to an `EventHandler`, gets one `Outcome` per event
and alone decides, from it, whether the event is done, retried or failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

DeliveryStatus = Literal["sent", "failed", "skipped", "simulated"]


class TransientDeliveryError(Exception):
    """Retrying later can succeed (timeouts, 5xx, rate limits). `retry_after` in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class PermanentDeliveryError(Exception):
    """Retrying cannot succeed (invalid number, unsubscribed, validation error)."""

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Event:
    """One claimed row of worker.events."""

    id: int
    kind: str
    subject_id: str | None
    payload: dict[str, Any]
    attempts: int
    expires_at: datetime | None
    created_at: datetime


@dataclass(slots=True)
class DeliveryRecord:
    """One ledger row: what happened to one (event, channel, recipient)."""

    channel: Literal["whatsapp", "email", "in_app"]
    recipient: str
    status: DeliveryStatus
    recipient_role: str | None = None
    template: str | None = None
    provider_message_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(slots=True)
class Outcome:
    """What handling one event produced.

    `deliveries` are recorded whatever happens next; `error` set means the event is not done:
    a `TransientDeliveryError` retries it, anything else fails it. `payload`, when set,
    replaces the stored payload (used to scrub what must not stay in the outbox).
    """

    deliveries: list[DeliveryRecord] = field(default_factory=list)
    error: Exception | None = None
    payload: dict[str, Any] | None = None


class EventHandler(Protocol):
    """What the claim loop needs from the handlers package."""

    async def prepare(self, events: Sequence[Event]) -> Any:
        """Load, in as few queries as possible, what the batch's messages need."""

    async def handle(self, event: Event, context: Any) -> Outcome:
        """Handle one event; never raise for a delivery problem, report it in the Outcome."""
