"""Starts a whole mesh the way `make run` does (`sentiloop up`), on free loopback
ports and a data directory of its own: for tests and benchmarks."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiloop.core.config import REPLICA_PORT_STRIDE, SERVICES, env_name

if TYPE_CHECKING:
    import grpc
    import httpx


# A mesh for mechanics: bootstraps train the tiny model in seconds, and inference picks
# up a newly active version quickly.
TINY_ENV = {"SENTILOOP_DEFAULT_PRESET": "tiny", "SENTILOOP_INFERENCE_POLL_SECONDS": "0.3"}


# Below the kernel's ephemeral range (32768-60999 by default), from which bind(0) would
# pick: a port there can be taken between this check and the service's own bind by the
# local side of any outgoing connection (and the services bind without SO_REUSEPORT).
_PORTS = (20000, 32000)
_given: set[int] = set()


def free_port() -> int:
    """A port nothing listens on and this process has not handed out before."""
    for _ in range(1000):
        port = random.randrange(*_PORTS)
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORTS}")


def replica_base_port(replicas: int = 2) -> int:
    """A free port whose replicas' ports (every REPLICA_PORT_STRIDE) are free too and below
    the kernel's ephemeral range."""
    while True:
        port = free_port()
        if port + REPLICA_PORT_STRIDE * (replicas - 1) >= 32000:
            continue
        taken = False
        for k in range(1, replicas):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + REPLICA_PORT_STRIDE * k))
                except OSError:
                    taken = True
        if not taken:
            return port


@dataclass
class RunningMesh:
    process: subprocess.Popen[str]
    data_dir: Path
    env: dict[str, str]
    envoy_port: int
    ports: dict[str, int]
    startup_seconds: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def envoy_address(self) -> str:
        return f"127.0.0.1:{self.envoy_port}"

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def token(self, role: str = "operator") -> str:
        """A credential `up` generated for this mesh: "operator" or "service" (core.auth)."""
        return (self.data_dir / "secrets" / f"{role}.token").read_text().strip()

    @property
    def operator_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token()}"}

    @property
    def service_headers(self) -> dict[str, str]:
        """What the services present to each other: the only credential that publishes."""
        return {"authorization": f"Bearer {self.token('service')}"}

    def operator_channel(
        self,
        address: str | None = None,
        role: str = "operator",
        options: list[tuple[str, Any]] | None = None,
    ) -> grpc.Channel:
        """A channel (to Envoy unless ``address`` names a service) that presents the
        ``role``'s credential on every call."""
        from sentiloop.core.auth import bearer_channel

        return bearer_channel(address or self.envoy_address, self.token(role), options)

    def pid(self, child: str) -> int:
        return int((self.data_dir / "run" / f"{child}.pid").read_text())

    def child_pids(self) -> dict[str, int]:
        return {path.stem: int(path.read_text()) for path in (self.data_dir / "run").glob("*.pid")}

    def health(self) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=3) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:
                return error.code, {"error": body.decode(errors="replace")}
        except OSError:
            return 0, {}

    def wait_for_health(self, status: int, timeout: float) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        last: tuple[int, dict[str, object]] = (0, {})
        while time.monotonic() < deadline:
            last = self.health()
            if last[0] == status:
                return last[1]
            time.sleep(0.05)
        raise TimeoutError(f"/health did not answer {status} within {timeout}s; last: {last}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def start_mesh(
    data_dir: Path, extra_env: dict[str, str] | None = None, timeout: float = 120.0
) -> RunningMesh:
    ports = {name: free_port() for name in SERVICES}
    envoy_port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "SENTILOOP_DATA_DIR": str(data_dir),
            "SENTILOOP_HOST": "127.0.0.1",
            "SENTILOOP_ENVOY_PORT": str(envoy_port),
            "SENTILOOP_ENVOY_ADMIN_PORT": str(free_port()),
            # Load generators and benchmarks on loopback lift the per-client limit; the
            # test of the limit sets its own.
            "SENTILOOP_RATE_LIMIT_PER_SECOND": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name, port in ports.items():
        env[env_name(name, "PORT")] = str(port)
        env.pop(env_name(name, "ADDR"), None)
    env.update(extra_env or {})
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "sentiloop.cli", "up", "--timeout", str(timeout)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Sentiloop is up"):
            break
    else:
        process.wait()
        raise RuntimeError("the mesh did not start:\n" + "".join(lines))
    mesh = RunningMesh(
        process=process,
        data_dir=data_dir,
        env=env,
        envoy_port=envoy_port,
        ports=ports,
        startup_seconds=time.monotonic() - started,
    )
    _drain(process)
    return mesh


def _drain(process: subprocess.Popen[str]) -> None:
    """Keeps reading the supervisor's output so it never blocks on a full pipe."""
    import threading

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stderr.write(f"[mesh] {line}")

    threading.Thread(target=pump, daemon=True).start()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Polls until ``predicate`` returns something truthy, and returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


# Short review sentences with their labels, for feedback in tests and benchmarks.
REVIEWS = [
    ("I love this product, it works perfectly", "positive"),
    ("Terrible quality, it broke after one day", "negative"),
    ("It is a phone case", "neutral"),
    ("Absolutely fantastic value for the money", "positive"),
    ("Worst purchase I have ever made", "negative"),
    ("The box arrived on Tuesday", "neutral"),
]


def give_feedback(
    client: httpx.Client, count: int, tag: str, flip: bool = False
) -> list[dict[str, Any]]:
    """Predicts ``count`` review sentences through Envoy and answers each prediction with
    feedback citing its id (labels flipped with ``flip``); returns the stored records."""
    records = []
    for i in range(count):
        text, label = REVIEWS[i % len(REVIEWS)]
        if flip:
            label = {"positive": "negative", "negative": "positive", "neutral": "positive"}[label]
        prediction = client.post("/predict", json={"text": f"{text} ({tag} {i})"})
        assert prediction.status_code == 200, prediction.text
        response = client.post(
            "/feedback",
            json={"prediction_id": prediction.json()["prediction_id"], "user_label": label},
        )
        assert response.status_code == 200, response.text
        records.append(response.json()["feedback"])
    return records


class PredictLoad:
    """``clients`` threads calling Predict through ``address`` in a loop, from entering
    the block until leaving it: the version of every answer in order, and every failure
    (the tests that a swap or a dying replica fails no call)."""

    def __init__(self, address: str, clients: int) -> None:
        self.versions: list[str] = []
        self.failures: list[str] = []
        self._address = address
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(clients)]

    def _loop(self) -> None:
        import grpc

        from sentiloop.v1 import inference_pb2, inference_pb2_grpc

        with grpc.insecure_channel(self._address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    answer = stub.Predict(inference_pb2.PredictRequest(text="works"), timeout=30)
                    self.versions.append(answer.model_version)
                except grpc.RpcError as error:
                    self.failures.append(f"{error.code().name}: {error.details()}")

    def __enter__(self) -> PredictLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


# The smallest artifact the registry accepts (core.artifacts): its weights are not weights.
MINIMAL_MODEL_FILES = {
    "config.json": b'{"model_type": "bert", "num_labels": 3}',
    "labels.json": b'{"labels": ["negative", "neutral", "positive"]}',
    "tokenizer.json": b"{}",
    "model.safetensors": b"not weights",
}


def tarball(files: dict[str, bytes]) -> bytes:
    """A model.tar.gz's bytes: ``files`` as plain members."""
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def write_unloadable_artifact(data_dir: Path, name: str = "unloadable") -> Path:
    """A complete, safe model.tar.gz in the local store's model area (it passes the
    registry's checks) that cannot load: a version that fails when activated."""
    path = data_dir / "objects" / "models" / name / "output" / "model.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tarball(MINIMAL_MODEL_FILES))
    return path


def scrape(client: httpx.Client) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics through Envoy (``client`` sends the operator token) as sample name ->
    [(labels, value)], parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def metric_sum(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(key) == want for key, want in labels.items())
    )


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a server's log, for an error saying why it did not start
    ("" when there is no log)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
