"""In-app notifications: rows in the app's `notifications` table, one per route and person."""

from __future__ import annotations

import asyncio

from handlers.contract import DeliveryRecord
from handlers.delivery import Message, current_scope
from handlers.models import MessageContext
from handlers.routing import routes_for


async def add_in_app_notifications(kind: str, ctx: MessageContext) -> list[DeliveryRecord]:
    """Write the in-app rows of `kind` (no opt-out: it is the user's own inbox)."""
    scope = current_scope()
    sends = []
    for route in routes_for(kind, "in_app"):
        target = scope.resolve(route, ctx)
        if target is None or target.person is None:
            continue
        rendered = scope.render(route, ctx, target)
        sends.append(
            scope.send(
                Message(
                    channel="in_app",
                    recipient=target.address,
                    subject=rendered.subject,
                    text=rendered.text,
                    role=route.role,
                    template=route.template,
                    meta={
                        "recipient_type": route.role,
                        "recipient_id": target.person.id,
                        "booking_id": ctx.booking.id if ctx.booking else None,
                        "type": route.template,
                    },
                )
            )
        )
    results = await asyncio.gather(*sends)
    return [record for record in results if record is not None]
