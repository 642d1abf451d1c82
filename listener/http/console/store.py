"""What the console reads and the one thing it writes (a retry, with its audit row), by named
query (`queries.sql` beside this file)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from core.queries import load_queries
from listener.queries import QUERIES as WORKER_QUERIES

QUERIES = load_queries(Path(__file__).with_name("queries.sql"))

#: Most events one "retry all failed of this filter" requeues (the confirmation says so).
RETRY_LIMIT = 1000
#: Rows on one page of a list.
PAGE_SIZE = 50
#: Problem rows one page of the failures list looks through at most (index-only, newest first),
#: whatever its filter: a filter matching little then costs a bounded time, not the ledger's
#: size, and the page offers to look further back from where it stopped.
SCAN_LIMIT = 5000
_FAR_FUTURE = "infinity"
_FAR_PAST = "-infinity"


@dataclass(frozen=True, slots=True)
class ProblemFilter:
    """The failures list's filter; every field optional."""

    kind: str | None = None
    channel: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def params(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "channel": self.channel,
            "reason": self.reason,
            "since": self.since or _FAR_PAST,
            "until": self.until or _FAR_FUTURE,
        }

    def query(self) -> dict[str, str]:
        """The filter as URL query parameters (for links and the confirmation form)."""
        return {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in asdict(self).items()
            if value
        }


@dataclass(frozen=True, slots=True)
class Cursor:
    """Keyset position in the failures list: the last row shown (newest first)."""

    created_at: datetime
    id: int

    def encode(self) -> str:
        return f"{self.created_at.isoformat()}~{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ValueError on anything but what `encode` makes."""
        when, _, ident = text.partition("~")
        return cls(datetime.fromisoformat(when), int(ident))


@dataclass(frozen=True, slots=True)
class ProblemPage:
    rows: list[dict[str, Any]]
    #: Where the next page starts; None at the end.
    next: Cursor | None
    #: Set when the page is short because its walk stopped (SCAN_LIMIT): the time it reached.
    walked_to: datetime | None


@dataclass(frozen=True, slots=True)
class Overview:
    event_counts: list[dict[str, Any]]
    failed_events: list[dict[str, Any]]
    channel_problems: list[dict[str, Any]]
    #: The oldest pending event (id, kind, created_at, age_seconds), or None.
    oldest_pending: dict[str, Any] | None
    job_runs: list[dict[str, Any]]
    workers: list[dict[str, Any]]


class ConsoleStore:
    """The console's database access over the daemon's pool. Plans are never cached (the
    statements run rarely, and a generic plan of the optional filters could scan the ledger)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(QUERIES[name], params, prepare=False)
            return await cur.fetchall()

    async def _one(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        rows = await self._rows(name, params)
        return rows[0] if rows else None

    async def overview(self) -> Overview:
        return Overview(
            event_counts=await self._rows("event_counts"),
            failed_events=await self._rows("recent_failed_events"),
            channel_problems=await self._rows("channel_problems"),
            oldest_pending=await self._one("oldest_pending", {}),
            job_runs=await self._rows("last_job_runs"),
            workers=await self._rows("workers"),
        )

    async def event(self, event_id: int) -> dict[str, Any] | None:
        return await self._one("event", {"id": event_id})

    async def event_deliveries(self, event_id: int) -> list[dict[str, Any]]:
        return await self._rows("event_deliveries", {"id": event_id})

    async def booking_reference(self, booking_id: str) -> str | None:
        row = await self._one("booking_reference", {"booking_id": booking_id})
        return row["reference"] if row else None

    async def events_of_booking(self, reference: str) -> list[dict[str, Any]]:
        return await self._rows("events_of_booking", {"reference": reference})

    async def event_exists(self, event_id: int) -> bool:
        row = await self._one("event_exists", {"id": event_id})
        return bool(row and row["exists"])

    async def recipient_of(self, delivery_id: int) -> str | None:
        row = await self._one("recipient_of", {"id": delivery_id})
        return row["recipient"] if row else None

    async def deliveries_to(self, recipient: str, before_id: int | None) -> list[dict[str, Any]]:
        params = {"recipient": recipient, "before_id": before_id or 2**63 - 1, "limit": PAGE_SIZE}
        return await self._rows("deliveries_to", params)

    async def problems(
        self,
        problem_filter: ProblemFilter,
        cursor: Cursor | None = None,
        *,
        failed_only: bool = False,
        limit: int = PAGE_SIZE,
    ) -> ProblemPage:
        """Up to `limit` matching rows among the next SCAN_LIMIT problem rows after `cursor`."""
        params = {
            **problem_filter.params(),
            "failed_only": failed_only,
            "before_at": cursor.created_at if cursor else _FAR_FUTURE,
            "before_id": cursor.id if cursor else 0,
            "limit": limit,
            "scan_limit": SCAN_LIMIT,
        }
        rows = await self._rows("problems", params)
        if len(rows) == limit:
            return ProblemPage(rows, Cursor(rows[-1]["created_at"], rows[-1]["id"]), walked_to=None)
        frontier = await self._one("problems_frontier", params)
        if frontier is None:  # the walk reached the end of the time range: nothing further back
            return ProblemPage(rows, None, walked_to=None)
        edge = Cursor(frontier["created_at"], frontier["id"])
        return ProblemPage(rows, edge, walked_to=edge.created_at)

    async def retry(self, event_ids: list[int], session_id: str, details: dict[str, Any]) -> list[int]:
        """Requeue these events (the CLI's `events retry` query, once each) and write the audit
        row, in one transaction; returns the ids requeued (finished ones only)."""
        requeued: list[int] = []
        async with self.pool.connection() as conn, conn.transaction():
            for event_id in event_ids:
                cur = await conn.execute(WORKER_QUERIES["retry_events"], {"id": event_id})
                requeued += [row[0] for row in await cur.fetchall()]
            await conn.execute(
                QUERIES["audit"],
                {
                    "action": "console.retry",
                    "category": "operations",
                    "entity_type": "worker.event",
                    "entity_id": str(event_ids[0]) if len(event_ids) == 1 else None,
                    "details": Jsonb(
                        {**details, "session": session_id, "requested": event_ids, "requeued": requeued}
                    ),
                },
            )
            if requeued:
                await conn.execute(QUERIES["notify_retry"])
        return requeued

    async def audit_sign_in(self, action: str, details: dict[str, Any]) -> None:
        """A sign-in, failed sign-in or sign-out: category `security`, kept forever by cleanup."""
        async with self.pool.connection() as conn:
            await conn.execute(
                QUERIES["audit"],
                {
                    "action": action,
                    "category": "security",
                    "entity_type": "console.session",
                    "entity_id": details.get("session"),
                    "details": Jsonb(details),
                },
            )
