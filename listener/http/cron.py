"""The platform's cron endpoints: `GET /api/cron/cleanup` and `GET /api/cron/reminders`.

Same contract as the Vercel routes they replace: `Authorization: Bearer $CRON_SECRET`, the
jobs run now (through the scheduler's once-at-a-time bookkeeping) and the answer is the platform's
JSON summary. Never open by default: without CRON_SECRET they answer 503.
"""

from __future__ import annotations

import hmac

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from listener.http.surface import Surface
from scheduler.batches import error_text
from scheduler.runs import run_job_now

log = structlog.get_logger(__name__)


def bearer_token_matches(authorization: str | None, secret: str) -> bool:
    """Constant-time comparison of the whole header, so timing tells nothing about the secret."""
    expected = f"Bearer {secret}".encode()
    return hmac.compare_digest((authorization or "").encode(), expected)


def _cron_endpoint(job: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> JSONResponse:
        surface: Surface = request.app.state.surface
        secret = surface.settings.cron_secret
        if not secret:
            log.warning("http.cron_disabled", job=job)
            return JSONResponse({"error": "CRON_SECRET is not configured"}, status_code=503)
        if not bearer_token_matches(request.headers.get("authorization"), secret):
            log.warning("http.cron_unauthorized", job=job)
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        log.info("http.cron_run", job=job)
        try:
            summary = await run_job_now(surface.pool, surface.settings, job, trigger="http")
        except Exception as exc:  # as the platform's route: 500 with the (masked) error, never a crash
            log.error("http.cron_failed", job=job, exc_info=True)
            return JSONResponse({"success": False, "error": error_text(exc)}, status_code=500)
        # A job with failed steps still reports its summary, with 500 so cron monitors notice.
        return JSONResponse(summary, status_code=200 if summary["success"] else 500)

    return endpoint


def cron_routes() -> list[Route]:
    return [
        Route("/api/cron/cleanup", _cron_endpoint("cleanup"), methods=["GET"]),
        Route("/api/cron/reminders", _cron_endpoint("reminders"), methods=["GET"]),
    ]
