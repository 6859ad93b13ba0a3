"""Dynamic batching over the wire, with the real (tiny) model: concurrent callers share
batches yet each gets exactly the answer it would get alone or inside PredictBatch, a
request larger than the queue's room answers RESOURCE_EXHAUSTED (HTTP 429), and a new
version swaps in under concurrent load without a failed call."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sentiloop.core.scripts import load_script
from sentiloop.data import vader
from sentiloop.testing import TINY_ENV, PredictLoad, RunningMesh, start_mesh, wait_for
from sentiloop.v1 import inference_pb2, inference_pb2_grpc

QUEUE = 100

# What a served engine promises across batches: exact for fp32 up to rounding, and within
# train.py's tolerance for an int8 graph (which serves only when it passed that check).
BATCH_TOLERANCE = load_script("train").INT8_BATCH_TOLERANCE


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(
        tmp_path_factory.mktemp("batching"),
        extra_env={**TINY_ENV, "SENTILOOP_INFERENCE_MAX_QUEUE": str(QUEUE)},
    )
    try:
        with httpx.Client(
            base_url=running.url, headers=running.operator_headers, timeout=120
        ) as client:
            started = client.post("/model-init/bootstrap?auto_deploy=true", json={})
            assert started.status_code == 200, started.text
            wait_for(lambda: client.get("/predict/status").json()["status"] == "InService", 180)
        yield running
    finally:
        assert running.stop() == 0


def test_concurrent_callers_each_get_their_own_answer(mesh: RunningMesh) -> None:
    texts = [text for _group, text, _label in vader.load_domain("amazon")[:64]]
    with mesh.operator_channel(mesh.address("inference")) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        def alone(text: str) -> inference_pb2.PredictResponse:
            return stub.Predict(inference_pb2.PredictRequest(text=text), timeout=60)

        with ThreadPoolExecutor(32) as pool:
            concurrent = list(pool.map(alone, texts))
        together = stub.PredictBatch(inference_pb2.PredictBatchRequest(texts=texts), timeout=60)
        one_by_one = [alone(text) for text in texts[:8]]

    assert [answer.text for answer in concurrent] == texts
    assert len({answer.prediction_id for answer in concurrent}) == len(texts)
    for answer, batched in zip(concurrent, together.predictions, strict=True):
        assert answer.label == batched.label
        for label, score in answer.scores.items():
            assert abs(score - batched.scores[label]) <= BATCH_TOLERANCE
    for answer, single in zip(concurrent, one_by_one, strict=False):
        assert answer.label == single.label
        assert abs(answer.confidence - single.confidence) <= BATCH_TOLERANCE


def test_more_texts_than_the_queue_holds_is_429(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=60) as client:
        refused = client.post("/predict/batch", json={"texts": ["fine"] * (QUEUE + 1)})
        assert refused.status_code == 429, refused.text
        body = refused.json()
        assert body["detail"] == "RESOURCE_EXHAUSTED" and "retry shortly" in body["error"]
        assert client.post("/predict/batch", json={"texts": ["fine"] * QUEUE}).status_code == 200


def test_a_hot_swap_under_concurrent_load_fails_no_call(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=120) as client:
        before = client.get("/predict/status").json()["model_version"]
        with PredictLoad(mesh.envoy_address, clients=6) as load:
            started = client.post("/model-init/bootstrap?auto_deploy=true", json={})
            assert started.status_code == 200, started.text
            wait_for(lambda: bool(load.versions) and load.versions[-1] != before, 180)
            count = len(load.versions)
            wait_for(lambda: len(load.versions) > count + 50, 60)  # and on, on the new one
    assert load.failures == [], load.failures[:5]
    assert load.versions[0] == before and load.versions[-1] != before
