"""A real PgBouncer in front of the test server, in transaction or session mode.

The binary is the distribution's (`apt-get install pgbouncer`, as `.ci/run` does); where there
is none, the tests that need it skip, saying so. Each pooler serves every database of the test
server (`* = ...`), so a test reaches its own fresh database through it by name.

In transaction mode the pools are kept small (two server connections per database and user) so
that the worker's connections really share server connections, as they do behind Supabase's
transaction pooler under load: a statement that relies on its session (a prepared statement,
LISTEN, a session lock) then lands on another client's server connection at once, not by luck.
In session mode each client holds a server connection, so there the pool has room for all.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.processes import free_port
from tests.waiting import wait_until

#: Debian installs it in /usr/sbin, which an unprivileged user's PATH often lacks.
PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
MISSING = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)"
PoolMode = Literal["transaction", "session"]


def _version() -> tuple[int, ...]:
    assert PGBOUNCER
    out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0, 0)


def _unprivileged_user() -> str | None:
    """PgBouncer refuses to run as root: the user it switches to (-u) when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root, and no unprivileged user for pgbouncer")


def unreachable_reason(server: str) -> str | None:
    """Why a pooler started here could not reach `server`, or None. Run as root, PgBouncer
    switches to an unprivileged user, who cannot open a Unix socket in root's private temporary
    directory (the embedded server's, when TEST_DATABASE_URL is not set)."""
    host = str(conninfo_to_dict(server).get("host") or "")
    if not host.startswith("/") or _unprivileged_user() is None:
        return None
    folders = [Path(host), *Path(host).parents]
    if all(folder.stat().st_mode & stat.S_IXOTH for folder in folders if folder.exists()):
        return None  # a shared socket folder (/var/run/postgresql): any user gets through
    return (
        f"the test server listens only on a socket in {host}, which pgbouncer (run as "
        f"{_unprivileged_user()}, not root) cannot open: set TEST_DATABASE_URL to a TCP server"
    )


class PgBouncer:
    """One pgbouncer process; `url(conninfo)` is the same database reached through it."""

    def __init__(self, server: str, mode: PoolMode) -> None:
        assert PGBOUNCER, MISSING
        self.mode = mode
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"pgbouncer-{mode}-"))
        target = conninfo_to_dict(server)
        user = str(target.get("user") or "postgres")
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.dir / "users.txt"),
            "pool_mode": mode,
            "default_pool_size": "2" if mode == "transaction" else "40",
            "max_client_conn": "500",
            "ignore_startup_parameters": "extra_float_digits",
            "logfile": str(self.dir / "pgbouncer.log"),
            "pidfile": str(self.dir / "pgbouncer.pid"),
        }
        if _version() >= (1, 21):
            # Newer PgBouncers can track protocol-level prepared statements; Supabase's pooler
            # and older PgBouncers (Debian 12 ships 1.18) cannot: test the worst case.
            settings["max_prepared_statements"] = "0"
        server_side = f"host={target.get('host', '127.0.0.1')} port={target.get('port', 5432)}"
        lines = ["[databases]", f"* = {server_side}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        (self.dir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        (self.dir / "users.txt").write_text(f'"{user}" ""\n')
        command = [PGBOUNCER, str(self.dir / "pgbouncer.ini")]
        if (runner := _unprivileged_user()) is not None:
            account = pwd.getpwnam(runner)
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
            command[1:1] = ["-u", runner]
        self._server = server
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(self._answers, timeout=15, message=f"pgbouncer ({mode}) accepting connections")
        except BaseException:
            self.stop()  # no pooler left running behind a failed start
            raise

    def url(self, conninfo: str) -> str:
        """`conninfo`'s database through this pooler."""
        return make_conninfo(conninfo, host="127.0.0.1", port=str(self.port))

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            log = (self.dir / "pgbouncer.log").read_text() if (self.dir / "pgbouncer.log").exists() else ""
            raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}: {log[-2000:]}")
        try:
            with psycopg.connect(self.url(self._server), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def pgbouncer(server: str, mode: PoolMode) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(server, mode)
    try:
        yield bouncer
    finally:
        bouncer.stop()
