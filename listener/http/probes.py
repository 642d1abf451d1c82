"""`GET /healthz` and `GET /metrics`: what a platform's health check and Prometheus read.

Both read the queue from the database at request time, so every worker answers with the same
truth about the shared queue, and a health check fails when the database cannot be reached.
"""

from __future__ import annotations

import psycopg
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.metrics import METRICS
from listener.http.surface import Surface, read_channel_backlog, read_queue_stats

log = structlog.get_logger(__name__)

#: What a failed queue read can raise: the database's errors, an exhausted pool, the deadline.
QUEUE_READ_ERRORS = (psycopg.Error, PoolTimeout, TimeoutError)


async def healthz(request: Request) -> JSONResponse:
    """200 when the worker can do its job; 503 naming every reason it cannot."""
    surface: Surface = request.app.state.surface
    problems: list[str] = []
    if not surface.listener.connected:
        problems.append("LISTEN connection is down")
    if surface.worker is not None:
        # The queue read below can succeed while the claim loop's statements fail (a pooler
        # refusing them, a function gone): events would then sit pending behind a green probe.
        problems += [f"{what} failing ({error})" for what, error in surface.worker.failing.items()]
    if surface.scheduler is None:
        scheduler = "disabled"
    else:
        scheduler = "running" if surface.scheduler.running else "stopped"
        if scheduler == "stopped":
            problems.append("scheduler is not running")
    body: dict[str, object] = {"listener": surface.listener.connected, "scheduler": scheduler}
    if surface.circuits:
        body["circuits"] = {circuit.provider: circuit.state for circuit in surface.circuits}
    circuit_limit = surface.settings.health_max_circuit_open_seconds
    for circuit in surface.circuits:
        if circuit.open_for() > circuit_limit:
            problems.append(
                f"{circuit.provider} circuit open for {circuit.open_for():.0f}s (limit {circuit_limit:.0f}s)"
            )
    try:
        stats = await read_queue_stats(surface.pool)
    except QUEUE_READ_ERRORS as exc:
        problems.append(f"database unreachable: {type(exc).__name__}")
    else:
        body.update(pending=stats.pending, oldest_pending_seconds=round(stats.oldest_pending_seconds, 1))
        limit = surface.settings.health_max_pending_age_seconds
        if stats.oldest_pending_seconds > limit:
            problems.append(
                f"oldest pending event is {stats.oldest_pending_seconds:.0f}s old (limit {limit:.0f}s)"
            )
    if problems:
        log.warning("http.unhealthy", reason="; ".join(problems))
        return JSONResponse({"status": "unhealthy", "reason": "; ".join(problems), **body}, status_code=503)
    return JSONResponse({"status": "ok", **body})


async def metrics(request: Request) -> Response:
    """Prometheus text; the queue gauges are refreshed from the database first (kept if it fails)."""
    surface: Surface = request.app.state.surface
    try:
        await read_queue_stats(surface.pool)
        await read_channel_backlog(surface.pool)
    except QUEUE_READ_ERRORS as exc:
        log.warning("http.metrics_queue_unavailable", error=type(exc).__name__)
    return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)


def probe_routes() -> list[Route]:
    return [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]
