"""Logging set-up: one structlog pipeline for our loggers and the stdlib's.

Modules only do `log = structlog.get_logger(__name__)` and log dotted event names with
key/value context (`log.info("event.done", event_id=...)`); rendering and redaction live here.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO

import structlog

from core.redaction import redact_processor, register_secrets


def configure_logging(
    level: str = "INFO", fmt: str = "json", stream: TextIO | None = None, secrets: Iterable[str] = ()
) -> None:
    """Route structlog and stdlib logging through the same processors to `stream`.

    Redaction runs after every context merge and just before rendering, so values bound
    anywhere (contextvars, bound loggers, stdlib `extra`) are all masked; `secrets` are literal
    values (the configured credentials) masked wherever they appear.
    """
    register_secrets(secrets)
    stream = stream or sys.stdout
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Chatty libraries: keep their warnings, drop their per-request info lines.
    for noisy in ("twilio.http_client", "httpx", "httpcore", "apscheduler", "uvicorn.access", "pgserver"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
