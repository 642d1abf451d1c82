"""The small interface between the claim loop (`listener`) and what handles events.

The claim loop hands a batch of `Event`s to an `EventHandler`, gets one `Outcome` per event
and alone decides, from it, whether the event is done, retried or failed. Each message's
`DeliveryRecord` is handed back the moment it exists (`RecordDelivery`), not with the outcome:
the claim loop makes it durable within one flush, so a provider's acceptance is on record even
if the event itself never finishes (SIGTERM, `kill -9`, a slow sibling message).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

DeliveryStatus = Literal["sent", "failed", "skipped", "simulated"]


class TransientDeliveryError(Exception):
    """Retrying later can succeed (timeouts, 5xx, rate limits). `retry_after` in seconds.

    `throttled` marks a refusal that says nothing about the message: the provider's rate limit
    (429), our own quota, or an open circuit (the provider was not even asked). The claim loop
    counts no attempt for it and waits `retry_after`, without growing the backoff.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        throttled: bool = False,
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code
        self.throttled = throttled


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
    #: Where its deadline counts from: its creation, or an operator's requeue.
    retry_from: datetime


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


#: Called by a handler with each delivery's record as soon as it is known (sent, failed,
#: skipped); the claim loop writes it to the ledger whatever becomes of the event.
RecordDelivery = Callable[[DeliveryRecord], None]


@dataclass(slots=True)
class Outcome:
    """What handling one event came to.

    `error` set means the event is not done: a `TransientDeliveryError` retries it, anything
    else fails it. `payload`, when set, replaces the stored payload (used to scrub what must not
    stay in the outbox). `deliveries` counts the records reported (for the log line).
    """

    error: Exception | None = None
    payload: dict[str, Any] | None = None
    deliveries: int = 0


class EventHandler(Protocol):
    """What the claim loop needs from the handlers package."""

    #: Kinds someone is waiting for right now (a login code): the claim loop claims and starts
    #: them at once, never queued behind bulk events it already holds.
    urgent_kinds: frozenset[str]

    async def prepare(self, events: Sequence[Event]) -> Any:
        """Load, in as few queries as possible, what the batch's messages need."""

    def stop_sending(self) -> None:
        """The worker is stopping: start no new provider request (those under way finish)."""

    async def handle(self, event: Event, context: Any, record: RecordDelivery) -> Outcome:
        """Handle one event, passing each delivery's record to `record` as soon as it is made;
        never raise for a delivery problem, report it in the Outcome."""
