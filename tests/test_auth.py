"""Who may call what (core.auth): every operator RPC is refused without a credential (401)
and with a public one (403), over JSON through Envoy and over gRPC straight to its service,
and accepted with the operator credential; public RPCs are open by default and need the
API key when one is configured; only the services' credential publishes events. The table
of roles names every RPC of the contract."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2

from sentiloop.core.auth import METHOD_ROLES, Credentials, Role, read_or_create_token
from sentiloop.core.config import SERVICES
from sentiloop.core.errors import PermissionDenied, Unauthenticated
from sentiloop.testing import TINY_ENV, RunningMesh, start_mesh

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR = ROOT / "services" / "sentiloop" / "v1" / "sentiloop.binpb"
API_KEY = "a-public-key-for-this-test"
ALLOWED_ORIGIN = "https://console.example"


def contract() -> dict[str, tuple[str, str, bool, bool]]:
    """Every RPC: full method name -> (HTTP verb, path, client streams, server streams)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())
    methods = {}
    for file in files.file:
        if not file.package.startswith("sentiloop."):
            continue
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern") or ""
                path = getattr(rule, verb) if verb else ""
                name = f"/{file.package}.{service.name}/{method.name}"
                methods[name] = (
                    verb.upper(),
                    path,
                    method.client_streaming,
                    method.server_streaming,
                )
    return methods


CONTRACT = contract()
OPERATOR = sorted(m for m, role in METHOD_ROLES.items() if role == Role.OPERATOR)
PUBLIC = sorted(m for m, role in METHOD_ROLES.items() if role == Role.PUBLIC)
PUBLISH = "/sentiloop.v1.NotificationService/Publish"
MESH_HEALTH = "/sentiloop.v1.MeshHealthService/GetMeshHealth"  # open: behind /health


def test_the_table_names_every_rpc_of_the_contract() -> None:
    assert set(METHOD_ROLES) == set(CONTRACT)


def test_credentials_decide_roles(tmp_path: Path) -> None:
    credentials = Credentials(operator="op", service="svc", api_key="key")
    bootstrap = "/sentiloop.v1.ModelInitService/Bootstrap"
    predict = "/sentiloop.v1.InferenceService/Predict"
    with pytest.raises(Unauthenticated, match="needs the operator credential"):
        credentials.authorize(bootstrap, "")
    with pytest.raises(Unauthenticated, match="not valid"):
        credentials.authorize(bootstrap, "Bearer guess")
    with pytest.raises(Unauthenticated, match="not valid"):
        credentials.authorize(bootstrap, "Basic op")
    with pytest.raises(PermissionDenied, match="Bootstrap needs the operator credential"):
        credentials.authorize(bootstrap, "Bearer key")
    assert credentials.authorize(bootstrap, "Bearer op") == Role.OPERATOR
    assert credentials.authorize(bootstrap, "Bearer svc") == Role.SERVICE
    with pytest.raises(PermissionDenied, match="Publish needs the service credential"):
        credentials.authorize(PUBLISH, "Bearer op")
    with pytest.raises(Unauthenticated, match="needs an API key"):
        credentials.authorize(predict, "")
    assert credentials.authorize(predict, "Bearer key") == Role.PUBLIC
    assert Credentials("op", "svc").authorize(predict, "") == Role.PUBLIC
    # A method nobody classified needs the operator: closed by default.
    with pytest.raises(Unauthenticated):
        Credentials("op", "svc").authorize("/sentiloop.v1.NewService/Change", "")
    assert Credentials("op", "svc").authorize("/grpc.health.v1.Health/Check", "") == Role.PUBLIC


def test_the_token_file_is_created_once_and_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "operator.token"
    found: list[str] = []
    threads = [
        threading.Thread(target=lambda: found.append(read_or_create_token(path))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and len(found[0]) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["operator.token"]
    assert read_or_create_token(path) == found[0]


def http_call(client: httpx.Client, method: str, token: str | None) -> httpx.Response:
    verb, path, _, _ = CONTRACT[method]
    path = re.sub(r"\{[^}]+\}", "nothing-here", path)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if verb == "GET":
        return client.get(path, headers=headers)
    return client.request(verb, path, headers=headers, content=b"{}")


def grpc_code(mesh: RunningMesh, method: str, token: str | None) -> grpc.StatusCode:
    """The status of ``method`` called with an empty request straight on its service."""
    service = next(
        (name for name, (_, full) in SERVICES.items() if f"/{full}/" in method), "inference"
    )  # every service serves the mesh health
    _, _, client_streams, server_streams = CONTRACT[method]
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(mesh.address(service)) as channel:
        try:
            if client_streams:
                channel.stream_unary(method)(iter([b""]), metadata=metadata, timeout=10)
            elif server_streams:
                # The first message or the refusal; a stream that would go on is cut here.
                stream = channel.unary_stream(method)(b"", metadata=metadata, timeout=3)
                next(iter(stream), None)
            else:
                channel.unary_unary(method)(b"", metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return,attr-defined]
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def private_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """A private deployment: public calls need the API key too."""
    running = start_mesh(
        tmp_path_factory.mktemp("auth"),
        extra_env={
            **TINY_ENV,
            "SENTILOOP_API_KEY": API_KEY,
            "SENTILOOP_CORS_ORIGINS": ALLOWED_ORIGIN,
        },
    )
    try:
        yield running
    finally:
        assert running.stop() == 0


def test_operator_calls_need_the_operator_credential(private_mesh: RunningMesh) -> None:
    operator = private_mesh.token()
    with httpx.Client(base_url=private_mesh.url, timeout=30) as client:
        for method in OPERATOR:
            if not CONTRACT[method][1]:
                continue  # gRPC only (UploadDataset): checked below
            missing = http_call(client, method, None)
            assert missing.status_code == 401, (method, missing.text)
            body = missing.json()
            assert body["detail"] == "UNAUTHENTICATED" and "Bearer" in body["error"], body
            public = http_call(client, method, API_KEY)
            assert public.status_code == 403, (method, public.text)
            assert public.json()["detail"] == "PERMISSION_DENIED"
            accepted = http_call(client, method, operator)
            assert accepted.status_code not in (401, 403), (method, accepted.text)
    for method in OPERATOR:
        assert grpc_code(private_mesh, method, None) == grpc.StatusCode.UNAUTHENTICATED, method
        assert grpc_code(private_mesh, method, API_KEY) == grpc.StatusCode.PERMISSION_DENIED
        assert grpc_code(private_mesh, method, operator) not in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        ), method


def test_a_private_deployment_needs_the_key_for_public_calls(private_mesh: RunningMesh) -> None:
    with httpx.Client(base_url=private_mesh.url, timeout=30) as client:
        refused = client.post("/predict", json={"text": "fine"})
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
        for method in PUBLIC:
            if CONTRACT[method][1] and not CONTRACT[method][3]:  # unary routes
                answer = http_call(client, method, API_KEY)
                assert answer.status_code not in (401, 403), (method, answer.text)
        assert client.get("/health").status_code == 200  # probes stay open
    for method in PUBLIC:
        expected = grpc.StatusCode.OK if method == MESH_HEALTH else grpc.StatusCode.UNAUTHENTICATED
        assert grpc_code(private_mesh, method, None) == expected, method


def test_only_the_services_publish(private_mesh: RunningMesh) -> None:
    """The finding: a forged model.promoted event was stored and broadcast."""
    forged = json.dumps({"type": "model.promoted", "subject": "v99"})
    with httpx.Client(base_url=private_mesh.url, timeout=30) as client:
        for token, status in ((None, 401), (API_KEY, 403), (private_mesh.token(), 403)):
            headers = {"authorization": f"Bearer {token}"} if token else {}
            answer = client.post("/events", content=forged, headers=headers)
            assert answer.status_code == status, answer.text
        events = client.get(
            "/events",
            params={"type_prefix": "model.promoted"},
            headers={"authorization": f"Bearer {API_KEY}"},
        ).json()["events"]
        assert [e for e in events if e["subject"] == "v99"] == []
        published = client.post("/events", content=forged, headers=private_mesh.service_headers)
        assert published.status_code == 200, published.text


def test_public_calls_are_open_by_default(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, timeout=30) as client:
        for method in PUBLIC:
            if CONTRACT[method][1] and not CONTRACT[method][3]:
                answer = http_call(client, method, None)
                assert answer.status_code not in (401, 403), (method, answer.text)
        assert client.post("/model-init/bootstrap", json={}).status_code == 401
    for method in PUBLIC:
        code = grpc_code(mesh, method, None)
        assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def test_the_generated_credentials_are_owner_only(mesh: RunningMesh) -> None:
    secrets_dir = mesh.data_dir / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    for role in ("operator", "service"):
        assert stat.S_IMODE((secrets_dir / f"{role}.token").stat().st_mode) == 0o600
    assert os.stat(secrets_dir).st_uid == os.getuid()


def test_cors_grants_only_the_configured_origins(private_mesh: RunningMesh) -> None:
    """An operator call from a page in the browser is preflighted (it carries an
    Authorization header): granted to a configured origin, refused to any other."""

    def preflight(origin: str) -> httpx.Response:
        return httpx.options(
            f"{private_mesh.url}/models/rollback",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
            timeout=10,
        )

    allowed = preflight(ALLOWED_ORIGIN)
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    foreign = preflight("http://evil.example")
    assert "access-control-allow-origin" not in foreign.headers, foreign.headers


@pytest.fixture(scope="module")
def limited_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(
        tmp_path_factory.mktemp("limited"),
        extra_env={**TINY_ENV, "SENTILOOP_RATE_LIMIT_PER_SECOND": str(RATE)},
    )
    try:
        yield running
    finally:
        assert running.stop() == 0


RATE = 5  # per second per client address, bursts up to twice that


def test_a_burst_over_the_rate_limit_is_429_then_service_again(limited_mesh: RunningMesh) -> None:
    """40 public calls at once from one address: the bucket (2 x RATE) lets a burst
    through and answers the rest 429 in the error shape; operator calls and health are not
    limited; a second later the client is served again."""
    with httpx.Client(base_url=limited_mesh.url, timeout=30) as client:

        def stats(_: int) -> httpx.Response:
            return client.get("/feedback/stats")

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(stats, range(40)))
        codes = [a.status_code for a in answers]
        assert 0 < codes.count(200) <= 2 * RATE + 2 and codes.count(429) >= 40 - 2 * RATE - 2
        assert set(codes) == {200, 429}, codes
        limited = next(a for a in answers if a.status_code == 429).json()
        assert limited["detail"] == "local_rate_limited" and limited["code"] == 8, limited
        assert f"at most {RATE} per second" in limited["error"], limited
        assert client.get("/health").status_code == 200
        assert client.get(
            "/models/activations", headers=limited_mesh.operator_headers
        ).status_code in (200, 429)
        time.sleep(1.5)
        assert client.get("/feedback/stats").status_code == 200
    # gRPC callers get RESOURCE_EXHAUSTED from the same bucket.
    with grpc.insecure_channel(limited_mesh.envoy_address) as channel:
        stub = channel.unary_unary("/sentiloop.v1.FeedbackService/GetFeedbackStats")
        with ThreadPoolExecutor(20) as pool:
            outcomes = list(pool.map(lambda _: _grpc_outcome(stub), range(40)))
    assert "RESOURCE_EXHAUSTED" in outcomes and "OK" in outcomes, outcomes


def _grpc_outcome(stub: Any) -> str:
    try:
        stub(b"", timeout=10)
        return "OK"
    except grpc.RpcError as error:
        return str(error.code().name)  # type: ignore[attr-defined]
