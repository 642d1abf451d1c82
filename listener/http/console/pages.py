"""The console's pages: overview, find, failures, one event's timeline, and retry (the only
action that changes anything, behind a confirmation page)."""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import structlog
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from handlers.contract import PermanentDeliveryError
from handlers.phones import to_e164
from handlers.routing import ROUTES
from listener.http.console.guard import PREFIX, render, signed_in
from listener.http.console.masking import mask_recipient
from listener.http.console.store import PAGE_SIZE, RETRY_LIMIT, SCAN_LIMIT, Cursor, ProblemFilter

if TYPE_CHECKING:
    from listener.http.console.app import Console

log = structlog.get_logger(__name__)

CHANNELS = ("whatsapp", "email", "in_app")
#: `#42`, or a bare number of at most 9 digits without a leading 0 (a phone number has more, or a 0).
_EVENT_ID = re.compile(r"#(\d{1,18})|([1-9]\d{0,8})")
_PHONE_LIKE = re.compile(r"(?:whatsapp:)?\+?[\d\s().-]{8,}")
#: What a retry confirmation passes on to its form: one event, or a filter.
_RETRY_FIELDS = ("event", "kind", "channel", "reason", "since", "until")


class BadRequest(ValueError):
    """A query parameter the page cannot use; answered 400 with its message."""


# ---------------------------------------------------------------------------- overview
#: Which provider's circuit a channel's messages pass (in-app rows have none).
PROVIDERS = {"whatsapp": "twilio", "email": "resend"}


def _pivot(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, int]]:
    """[{kind, status, n}] -> {kind: {status: n}}."""
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        table[row[key]][row["status"]] = row["n"]
    return dict(table)


async def _overview_context(console: Console) -> dict[str, Any]:
    data = await console.store.overview()
    channels = _pivot(data.channel_problems, "channel")
    return {
        "kinds": _pivot(data.event_counts, "kind"),
        "failed_events": data.failed_events,
        "channels": {channel: channels.get(channel, {}) for channel in CHANNELS},
        "circuits": {circuit.provider: circuit.state for circuit in console.circuits},
        "providers": PROVIDERS,
        "pending": sum(row["n"] for row in data.event_counts if row["status"] == "pending"),
        "oldest": data.oldest_pending,
        "job_runs": data.job_runs,
        "workers": data.workers,
        "stale_after": console.settings.stale_after_seconds,
        "now": datetime.now(UTC),
    }


@signed_in
async def overview(request: Request, console: Console, session: str) -> Response:
    return render(request, "overview.html", session, **await _overview_context(console))


@signed_in
async def overview_live(request: Request, console: Console, session: str) -> Response:
    return render(request, "_overview.html", session, **await _overview_context(console))


# ---------------------------------------------------------------------------- find
@signed_in
async def find(request: Request, console: Console, session: str) -> Response:
    """By event id (`123` or `#123`), booking reference, or a recipient typed in full (email or
    phone, in any format the worker accepts); `more=<delivery id>` pages on through a recipient's
    deliveries without putting the address in a link."""
    query = request.query_params.get("q", "").strip()[:200]
    more = request.query_params.get("more", "")
    context: dict[str, Any] = {"q": "", "searched": None, "events": None, "deliveries": None}
    if more.isdigit():
        recipient = await console.store.recipient_of(int(more))
        if recipient is not None:
            return await _recipient_results(request, console, session, recipient, int(more))
    if not query:
        return render(request, "find.html", session, **context)
    if match := _EVENT_ID.fullmatch(query):
        event_id = int(match.group(1) or match.group(2))
        if await console.store.event_exists(event_id):
            return RedirectResponse(f"{PREFIX}/events/{event_id}", 303)
        return render(
            request,
            "find.html",
            session,
            **context | {"q": query, "searched": f"event {event_id}", "events": []},
        )
    if "@" in query or _PHONE_LIKE.fullmatch(query):
        try:
            recipient = _normalised_recipient(query, console.settings.default_phone_region)
        except PermanentDeliveryError:
            return render(
                request, "find.html", session, **context | {"error": "not an email address or phone number"}
            )
        return await _recipient_results(request, console, session, recipient, None)
    events = await console.store.events_of_booking(query)
    return render(
        request,
        "find.html",
        session,
        **context | {"q": query, "searched": f"booking {query}", "events": events},
    )


def _normalised_recipient(query: str, region: str) -> str:
    """As the ledger writes it: E.164 for a phone, lower case for an email."""
    if "@" in query:
        return query.strip().lower()
    return to_e164(query.removeprefix("whatsapp:"), region)


async def _recipient_results(
    request: Request, console: Console, session: str, recipient: str, before_id: int | None
) -> Response:
    rows = await console.store.deliveries_to(recipient, before_id)
    more = rows[-1]["id"] if len(rows) == PAGE_SIZE else None
    return render(
        request,
        "find.html",
        session,
        q="",
        searched=mask_recipient(recipient),
        events=None,
        deliveries=rows,
        more=more,
    )


# ---------------------------------------------------------------------------- failures
def _time(value: str | None) -> datetime | None:
    """A `datetime-local` field's value (or any ISO time); naive times are UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(f"not a time: {value[:40]!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _filter(params: Mapping[str, Any]) -> ProblemFilter:
    kind = params.get("kind") or None
    channel = params.get("channel") or None
    if kind is not None and kind not in ROUTES:
        raise BadRequest(f"unknown kind {kind[:40]!r}")
    if channel is not None and channel not in CHANNELS:
        raise BadRequest(f"unknown channel {channel[:40]!r}")
    reason = (params.get("reason") or "").strip()[:100] or None
    return ProblemFilter(kind, channel, reason, _time(params.get("since")), _time(params.get("until")))


def _bad_request(exc: BadRequest) -> Response:
    return PlainTextResponse(str(exc), 400)


@signed_in
async def failures(request: Request, console: Console, session: str) -> Response:
    try:
        problem_filter = _filter(request.query_params)
        after = request.query_params.get("after")
        cursor = Cursor.decode(after) if after else None
    except ValueError as exc:  # a BadRequest, or a cursor that is not one
        return _bad_request(BadRequest(str(exc)))
    page = await console.store.problems(problem_filter, cursor)
    next_link = None
    if page.next is not None:
        next_link = f"{PREFIX}/failures?" + urlencode({**problem_filter.query(), "after": page.next.encode()})
    return render(
        request,
        "failures.html",
        session,
        rows=page.rows,
        walked_to=page.walked_to,
        scan_limit=SCAN_LIMIT,
        f=problem_filter,
        kinds=list(ROUTES),
        channels=CHANNELS,
        next_link=next_link,
        filter_query=urlencode(problem_filter.query()),
        requeued=request.query_params.get("requeued"),
    )


# ---------------------------------------------------------------------------- timeline
async def _booking_reference(console: Console, subject_id: str | None) -> str | None:
    try:
        booking_id = str(uuid.UUID(subject_id or ""))
    except ValueError:  # an OTP's or an application's subject
        return None
    return await console.store.booking_reference(booking_id)


@signed_in
async def timeline(request: Request, console: Console, session: str) -> Response:
    return await _timeline(request, console, session, "timeline.html", full=True)


@signed_in
async def timeline_live(request: Request, console: Console, session: str) -> Response:
    return await _timeline(request, console, session, "_timeline_live.html", full=False)


async def _timeline(
    request: Request, console: Console, session: str, template: str, *, full: bool
) -> Response:
    """One event's timeline: the whole page, or (`full` False) the part its refresh replaces."""
    event_id = request.path_params["event_id"]
    event = await console.store.event(event_id)
    if event is None:
        return PlainTextResponse(f"no event {event_id}", 404)
    context: dict[str, Any] = {"event": event, "deliveries": await console.store.event_deliveries(event_id)}
    if full:
        context |= {
            "reference": await _booking_reference(console, event["subject_id"]),
            "preview": await console.previewer.render(event),
            "requeued": request.query_params.get("requeued"),
        }
    return render(request, template, session, **context)


# ---------------------------------------------------------------------------- retry
async def _retry_targets(console: Console, params: Mapping[str, Any]) -> tuple[list[int], dict[str, Any]]:
    """The events a retry request means, and what the audit row says it was."""
    event = str(params.get("event") or "")
    if event:
        if not event.isdigit() or len(event) > 18:
            raise BadRequest("not an event id")
        return [int(event)], {"event": int(event)}
    problem_filter = _filter(params)
    page = await console.store.problems(problem_filter, failed_only=True, limit=RETRY_LIMIT)
    return sorted({row["event_id"] for row in page.rows}), {"filter": problem_filter.query()}


@signed_in
async def confirm_retry(request: Request, console: Console, session: str) -> Response:
    try:
        event_ids, what = await _retry_targets(console, request.query_params)
    except BadRequest as exc:
        return _bad_request(exc)
    failed: list[dict[str, Any]] = []
    if "event" in what:
        failed = [
            row for row in await console.store.event_deliveries(event_ids[0]) if row["status"] == "failed"
        ]
    return render(
        request,
        "confirm_retry.html",
        session,
        event_ids=event_ids,
        what=what,
        failed=failed,
        limit=RETRY_LIMIT,
        scan_limit=SCAN_LIMIT,
        fields={key: value for key, value in request.query_params.items() if key in _RETRY_FIELDS},
    )


@signed_in
async def retry(request: Request, console: Console, session: str) -> Response:
    form = await request.form()
    try:
        event_ids, what = await _retry_targets(console, form)
    except BadRequest as exc:
        return _bad_request(exc)
    requeued = await console.store.retry(event_ids, session, what) if event_ids else []
    log.info("console.retried", session=session, requested=len(event_ids), requeued=requeued)
    if "event" in what:
        return RedirectResponse(f"{PREFIX}/events/{what['event']}?requeued={len(requeued)}", 303)
    query = urlencode({**what["filter"], "requeued": len(requeued)})
    return RedirectResponse(f"{PREFIX}/failures?{query}", 303)
