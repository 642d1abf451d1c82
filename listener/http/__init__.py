"""The optional HTTP surface (when PORT is set): health, metrics, cron endpoints, Twilio webhooks.

`create_app` builds the Starlette app from the daemon's live parts; `HttpServer` runs it with
uvicorn on the daemon's own event loop and stops with it.
"""

from listener.http.app import create_app
from listener.http.server import HttpServer
from listener.http.surface import Surface

__all__ = ["HttpServer", "Surface", "create_app"]
