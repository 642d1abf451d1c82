"""The console as a Starlette sub-application, mounted at /console on the worker's HTTP server
(`flavor-worker run` with PORT set) or served alone by `flavor-worker console`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from core.redaction import mask_text, redact_value
from core.settings import Settings
from listener.http.console import pages, session
from listener.http.console.auth import ConsoleAuth, LoginLimiter
from listener.http.console.guard import PREFIX, SecurityHeaders
from listener.http.console.masking import mask_recipient
from listener.http.console.preview import Previewer
from listener.http.console.store import ConsoleStore
from listener.http.surface import CircuitState

_HERE = Path(__file__).parent


@dataclass(frozen=True, slots=True)
class Console:
    """Everything a console endpoint needs, built once per app."""

    settings: Settings
    auth: ConsoleAuth
    limiter: LoginLimiter
    store: ConsoleStore
    previewer: Previewer
    templates: Jinja2Templates
    #: The provider circuits of the worker serving the console (none for `flavor-worker console`).
    circuits: Sequence[CircuitState] = ()


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    env = templates.env
    env.globals["base"] = PREFIX
    env.filters |= {
        "masked": mask_recipient,
        "clean": lambda text: mask_text(str(text)) if text is not None else "",
        "redacted": lambda value: redact_value("value", value),
        "when": _when,
        "age": _age,
    }
    return templates


def build_console_app(
    settings: Settings, pool: AsyncConnectionPool, circuits: Sequence[CircuitState] = ()
) -> Starlette:
    app = Starlette(
        routes=[
            Route("/login", session.login_form, methods=["GET"]),
            Route("/login", session.login, methods=["POST"]),
            Route("/logout", session.logout, methods=["POST"]),
            Route("/", pages.overview, methods=["GET"]),
            Route("/overview/live", pages.overview_live, methods=["GET"]),
            Route("/find", pages.find, methods=["GET"]),
            Route("/failures", pages.failures, methods=["GET"]),
            Route("/events/{event_id:int}", pages.timeline, methods=["GET"]),
            Route("/events/{event_id:int}/live", pages.timeline_live, methods=["GET"]),
            Route("/retry", pages.confirm_retry, methods=["GET"]),
            Route("/retry", pages.retry, methods=["POST"]),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ],
        middleware=[Middleware(SecurityHeaders)],
    )
    app.state.console = Console(
        settings=settings,
        auth=ConsoleAuth(settings),
        limiter=LoginLimiter(),
        store=ConsoleStore(pool),
        previewer=Previewer(settings, pool),
        templates=_templates(),
        circuits=circuits,
    )
    return app


def console_mount(
    settings: Settings, pool: AsyncConnectionPool, circuits: Sequence[CircuitState] = ()
) -> Mount:
    """The console at /console, for the worker's app (its circuits shown on the overview)."""
    return Mount(PREFIX, app=build_console_app(settings, pool, circuits))
