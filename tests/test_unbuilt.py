"""RPCs a later issue builds answer UNIMPLEMENTED (501 through Envoy), naming the issue."""

from __future__ import annotations

import grpc
import httpx
import pytest
from sentiloop.testing import RunningMesh
from sentiloop.v1 import inference_pb2, inference_pb2_grpc, model_init_pb2, model_init_pb2_grpc

UNBUILT_JSON = [
    ("POST", "/predict", {"text": "I love it"}, "issue #3"),
    ("GET", "/models", None, "issue #3"),
    ("POST", "/evaluate", {}, "issue #4"),
    ("POST", "/retrain", {}, "issue #4"),
    ("GET", "/events", None, "issue #4"),
    ("POST", "/model-init/bootstrap?auto_deploy=true", {}, "issue #3"),
    ("GET", "/model-init/status/job-1", None, "issue #3"),
    ("POST", "/model-init/deploy/job-1", {}, "issue #3"),
    ("GET", "/model-init/endpoint-status", None, "issue #3"),
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


@pytest.mark.parametrize("via", ["inference", "envoy"])
def test_unbuilt_rpc_is_unimplemented_over_grpc(mesh: RunningMesh, via: str) -> None:
    address = mesh.envoy_address if via == "envoy" else mesh.address("inference")
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as raised:
        inference_pb2_grpc.InferenceServiceStub(channel).Predict(
            inference_pb2.PredictRequest(text="hi"), timeout=5
        )
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "issue #3" in (raised.value.details() or "")


def test_unbuilt_stream_is_unimplemented(mesh: RunningMesh) -> None:
    with grpc.insecure_channel(mesh.address("model_init")) as channel:
        stream = model_init_pb2_grpc.ModelInitServiceStub(channel).WatchTrainingJob(
            model_init_pb2.WatchTrainingJobRequest(job_name="job-1"), timeout=5
        )
        with pytest.raises(grpc.RpcError) as raised:
            list(stream)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "issue #3" in (raised.value.details() or "")
