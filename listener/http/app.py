"""The Starlette app: every route of one worker process's HTTP surface."""

from __future__ import annotations

from starlette.applications import Starlette

from listener.http.console import console_mount
from listener.http.cron import cron_routes
from listener.http.probes import probe_routes
from listener.http.surface import Surface
from listener.http.webhooks import webhook_routes


def create_app(surface: Surface) -> Starlette:
    """The app, with the daemon's live parts in `app.state.surface` for the endpoints to read."""
    app = Starlette(
        routes=[
            *probe_routes(),
            *cron_routes(),
            *webhook_routes(),
            console_mount(surface.settings, surface.pool, surface.circuits),
        ]
    )
    app.state.surface = surface
    return app
