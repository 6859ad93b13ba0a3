"""RPCs a later issue builds answer UNIMPLEMENTED (501 through Envoy), naming the issue."""

from __future__ import annotations

import grpc
import httpx
import pytest

from sentiloop.testing import RunningMesh
from sentiloop.v1 import evaluation_pb2, evaluation_pb2_grpc

UNBUILT_JSON: list[tuple[str, str, object, str]] = [
    ("POST", "/evaluate", {}, "issue #4"),
    ("GET", "/evaluations", None, "issue #4"),
    ("POST", "/retrain", {}, "issue #4"),
    ("GET", "/retrain/policy", None, "issue #4"),
]


@pytest.mark.parametrize(("method", "path", "body", "issue"), UNBUILT_JSON)
def test_unbuilt_rpc_is_501_through_envoy(
    http: httpx.Client, method: str, path: str, body: object, issue: str
) -> None:
    response = http.request(method, path, json=body)
    assert response.status_code == 501
    error = response.json()
    assert error["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "not built yet" in error["message"] and issue in error["message"]


@pytest.mark.parametrize("via", ["evaluation", "envoy"])
def test_unbuilt_rpc_is_unimplemented_over_grpc(mesh: RunningMesh, via: str) -> None:
    address = mesh.envoy_address if via == "envoy" else mesh.address("evaluation")
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as raised:
        evaluation_pb2_grpc.EvaluationServiceStub(channel).Evaluate(
            evaluation_pb2.EvaluateRequest(), timeout=5
        )
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "issue #4" in (raised.value.details() or "")
