"""Shared fixtures: a real PostgreSQL, a fresh migrated database per test, worker processes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from listener.migrate import migrate
from testkit.fake_providers import FakeProviders
from tests.pgharness import (
    PrivateServer,
    create_database,
    drop_database,
    shared_server,
    unique_name,
)
from tests.processes import WorkerProcess


@pytest.fixture(scope="session")
def pg_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin conninfo of the shared test server."""
    root = tmp_path_factory.getbasetemp().parent
    with shared_server(root) as conninfo:
        yield conninfo


@pytest.fixture(scope="session")
def template_db(pg_admin: str) -> Iterator[str]:
    """A database migrated with the reference schema, copied for each test (one per xdist worker)."""
    name = f"fw_tpl_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}"
    drop_database(pg_admin, name)
    migrate(create_database(pg_admin, name), reference_schema=True)
    yield name
    drop_database(pg_admin, name)


@pytest.fixture
def db_url(pg_admin: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = unique_name("fw_test")
    conninfo = create_database(pg_admin, name, template=template_db)
    yield conninfo
    drop_database(pg_admin, name)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's database, as the booking app would have."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def empty_db_url(pg_admin: str) -> Iterator[str]:
    """A fresh database with nothing in it (for migration tests)."""
    name = unique_name("fw_empty")
    conninfo = create_database(pg_admin, name)
    yield conninfo
    drop_database(pg_admin, name)


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[PrivateServer]:
    """A server this test may restart; migrated with the reference schema."""
    server = PrivateServer(tmp_path / "pg")
    migrate(server.conninfo, reference_schema=True)
    yield server
    with contextlib.suppress(Exception):
        server.stop()


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeProviders]:
    """The fake Twilio + Resend, one per test module (starting one costs a thread and a port)."""
    with FakeProviders() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeProviders) -> FakeProviders:
    """The module's fake providers, with no recorded request and no script left from a test."""
    fake_server.reset()
    return fake_server


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator:
    """Start `flavor-worker run` processes; all are killed at the end of the test."""
    started: list[WorkerProcess] = []

    def spawn(conninfo: str, **env: str) -> WorkerProcess:
        proc = WorkerProcess(conninfo, tmp_path / f"worker-{len(started)}.log", **env)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.close()

