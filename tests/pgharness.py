"""Real PostgreSQL for the tests: where the server comes from, fresh databases, private servers.

Order of preference for the shared server: TEST_DATABASE_URL; a testcontainers PostgreSQL when
a Docker engine answers (probed in milliseconds); the embedded `pgserver` server otherwise.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.embedded import embedded_bin_dir, start_embedded_server


def docker_answers(timeout: float = 0.2) -> bool:
    """True when a Docker engine replies to a ping on its unix socket."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return False
    path = host.removeprefix("unix://")
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"200" in sock.recv(64)
    except OSError:
        return False


@contextmanager
def shared_server(data_root: Path) -> Iterator[str]:
    """Yield the admin conninfo of the server the tests' databases are created on."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
    elif docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
    else:
        yield start_embedded_server(data_root / "shared-pg")


def with_dbname(conninfo: str, dbname: str) -> str:
    return make_conninfo(conninfo, dbname=dbname)


def create_database(admin: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        if template:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_dbname(admin, name)


def drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class PrivateServer:
    """A PostgreSQL server of one test's own, which that test may stop and restart."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        # Two embedded servers started at once by two xdist workers collide in pgserver's set-up
        # (pg_ctl start exits 1 for one of them): one start at a time, across processes.
        with open(Path(tempfile.gettempdir()) / "flavor-worker-private-server.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.conninfo = start_embedded_server(data_dir)

    def _pg_ctl(self, *args: str) -> None:
        command = [str(embedded_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-w", *args]
        if os.geteuid() == 0:  # pgserver runs the server as its own unprivileged user
            command = ["runuser", "-u", "pgserver", "--", *command]
        # The server inherits pg_ctl's stdout: never a pipe, or pg_ctl's caller waits forever.
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.data_dir / "log"))

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast")

    def start(self) -> None:
        opts = conninfo_to_dict(self.conninfo)
        self._pg_ctl("start", "-o", f"-h '' -k {opts['host']}", "-l", str(self.data_dir / "log"))
