"""A real PostgreSQL server for tests: Debian's `postgresql` package (`make system-deps`),
`initdb` into a temporary folder and `pg_ctl start` on a free loopback port.

    with running_postgres() as server:
        url = server.create_database()     # a fresh, empty database: postgresql://...

conftest.py makes a session fixture of it (`postgres`), started on first use. PostgreSQL
refuses to run as root: as root (CI, this machine) the server runs as an unprivileged
system user (`postgres`, which the package creates, else `nobody`) in a folder it owns."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sentiloop.testing import free_port, log_tail

SUPERUSER = "sentiloop"
UNPRIVILEGED_USERS = ("postgres", "nobody")


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: the newest /usr/lib/postgresql/<version>/bin (Debian
    keeps them off PATH), else PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    def __init__(self) -> None:
        binaries = bin_dir()
        if binaries is None:
            pytest.fail(
                "PostgreSQL's initdb/pg_ctl are missing: run `make system-deps`"
                " (apt-get install postgresql)"
            )
        self.bin = binaries
        self.port = free_port()
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self.user = next(
                (entry for entry in map(_user, UNPRIVILEGED_USERS) if entry is not None), None
            )
            assert self.user is not None, f"none of {UNPRIVILEGED_USERS} exists"
        # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, the server's user could
        # not reach a folder inside it.
        self.directory = Path(tempfile.mkdtemp(prefix="sentiloop-pg-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        if self.user is not None:
            os.chown(self.directory, self.user.pw_uid, self.user.pw_gid)
        self.start_seconds = 0.0

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> None:
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra = {
                "user": self.user.pw_uid,
                "group": self.user.pw_gid,
                "extra_groups": [],
                "env": {**os.environ, "HOME": str(self.directory), "USER": self.user.pw_name},
            }
        done = subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            **extra,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                f"{self.log_tail()}"
            )

    def start(self) -> None:
        started = time.monotonic()
        if not self.data.exists():
            # --no-sync: a test cluster need not survive a power cut of its own setup.
            self._run(
                "initdb",
                "--no-sync",
                "--no-instructions",
                "--auth=trust",
                f"--username={SUPERUSER}",
                "--encoding=UTF8",
                "--locale=C",
                "-D",
                str(self.data),
            )
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.directory}",
                "-c max_connections=200",
            ]
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-o", options, "start"
        )
        self.start_seconds = time.monotonic() - started

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, url: str, sql: str) -> list[tuple[Any, ...]]:
        """One statement on its own connection (a test's look behind the store)."""
        with psycopg.connect(url, autocommit=True) as connection:
            cursor = connection.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def slow_inserts(self, url: str, table: str, condition: str, seconds: float) -> None:
        """Inserts into ``table`` (``schema.table``) of a row meeting ``condition`` (on
        ``NEW``) sleep ``seconds`` inside their transaction: a writer slow to commit, for
        the tests that a reader never passes over a lower id still being inserted."""
        schema = table.split(".")[0]
        self.execute(
            url,
            f"""CREATE FUNCTION {schema}.slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF {condition} THEN PERFORM pg_sleep({seconds}); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER slow_insert BEFORE INSERT ON {table}
                FOR EACH ROW EXECUTE FUNCTION {schema}.slow_insert();""",
        )

    def wait_for_a_slow_insert(self, url: str, timeout: float = 5.0) -> None:
        """Returns once an insert made slow by ``slow_inserts`` is sleeping (its id drawn)."""
        deadline = time.monotonic() + timeout
        while not self.execute(url, "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"):
            assert time.monotonic() < deadline, "the slow insert never started"
            time.sleep(0.02)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
