"""In-app notifications: rows in the app's `notifications` table, one per route and person."""

from __future__ import annotations

from handlers.delivery import Outgoing, direct_scope
from handlers.models import MessageContext


def add_in_app_notifications(kind: str, ctx: MessageContext) -> Outgoing:
    """The in-app rows of `kind`, composed (no opt-out: it is the user's own inbox); await to write."""
    return direct_scope().compose(kind, ctx, "in_app")
