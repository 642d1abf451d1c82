"""A handler that only logs each event: a test stand-in for the router where messages do not matter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from handlers.contract import Event, Outcome, RecordDelivery

log = structlog.get_logger(__name__)


class LoggingHandler:
    """Marks every event handled after one log line (no messages are sent)."""

    urgent_kinds: frozenset[str] = frozenset()

    async def prepare(self, events: Sequence[Event]) -> None:
        return None

    def stop_sending(self) -> None:
        return None

    async def handle(self, event: Event, context: Any, record: RecordDelivery) -> Outcome:
        log.info("event.handled", event_id=event.id, kind=event.kind, subject_id=event.subject_id)
        return Outcome()
