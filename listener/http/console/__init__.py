"""The operator console at /console: overview, find, failures, an event's timeline, retry.

Server-rendered Jinja2 on the worker's Starlette app, one stylesheet and one small script in
`static/`, no build step. Its reads are in `queries.sql`; its only write is a retry (the CLI's
`events retry` query) with its audit row.
"""

from listener.http.console.app import build_console_app, console_mount

__all__ = ["build_console_app", "console_mount"]
