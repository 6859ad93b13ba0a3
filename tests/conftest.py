from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from postgres import PostgresServer, running_postgres

from sentiloop.core.processes import pid_alive
from sentiloop.testing import RunningMesh, start_mesh

# Installed by `make system-deps` (apt-get); Playwright never downloads a browser here.
CHROMIUM = os.environ.get("SENTILOOP_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """The whole mesh, started as `make run` starts it, shared by the session."""
    running = start_mesh(tmp_path_factory.mktemp("mesh"))
    yield running
    children = running.child_pids()
    assert running.stop() == 0
    assert not [name for name, pid in children.items() if pid_alive(pid)], "orphans left"


@pytest.fixture
def http(mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=10) as client:
        yield client


@pytest.fixture
def channel_to(mesh: RunningMesh) -> Iterator[object]:
    channels: list[grpc.Channel] = []

    def open_channel(service: str) -> grpc.Channel:
        address = mesh.envoy_address if service == "envoy" else mesh.address(service)
        channel = mesh.operator_channel(address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (tests/postgres.py), started once on first use; tests
    take a fresh database each with ``postgres.create_database()``."""
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database per test, for the stores' tests on both engines: a SQLite file,
    or a new database on the test server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium, driven by Playwright, for the tests of the mesh's pages."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium), "
            "or point SENTILOOP_TEST_CHROMIUM at a Chromium binary"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()
