"""The embedded PostgreSQL used when no DATABASE_URL is given (demo, first run, bench).

It is the `pgserver` wheel's own server binaries in a local data folder, and it works as root
too (pgserver then runs the server as an unprivileged system user). The wheel weighs 34 MB that
a deployed worker, which always has DATABASE_URL, never uses: it comes with the optional extra
`flavor-worker[embedded]`, which `make run` and `make test` install.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


class EmbeddedServerMissing(RuntimeError):
    """No DATABASE_URL, and no embedded server installed to stand in for it."""

    def __init__(self) -> None:
        super().__init__(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: set DATABASE_URL,"
            " or install it with `pip install 'flavor-worker[embedded]'`"
        )


def start_embedded_server(data_dir: Path) -> str:
    """Start (or reuse) the server in `data_dir` and return its connection string.

    The server stays up while any process that asked for it lives, and stops after the last.
    Raises `EmbeddedServerMissing` without the `embedded` extra.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ModuleNotFoundError as exc:
            if exc.name != "pgserver":
                raise
            raise EmbeddedServerMissing() from None

        data_dir = data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
    uri = server.get_uri()
    log.info("database.embedded_started", data_dir=str(data_dir))
    return uri


def embedded_bin_dir() -> Path:
    """The server programs shipped in the pgserver wheel (pg_ctl, pgbench, ...)."""
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"
