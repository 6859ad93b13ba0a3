"""FeedbackService end to end: JSON through Envoy and gRPC with the generated stubs."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable

import grpc
import httpx
import pytest

from sentiloop.testing import RunningMesh
from sentiloop.v1 import feedback_pb2 as pb
from sentiloop.v1 import feedback_pb2_grpc as pb_grpc

Channels = Callable[[str], grpc.Channel]


def stats(http: httpx.Client) -> dict[str, object]:
    response = http.get("/feedback/stats")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def all_feedback(http: httpx.Client) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    token = ""
    while True:
        params = {"page_size": "2"} | ({"page_token": token} if token else {})
        page = http.get("/feedback", params=params).json()
        records += page["feedback"]
        token = page["next_page_token"]
        if not token:
            return records


def test_json_feedback_through_envoy(mesh: RunningMesh, http: httpx.Client) -> None:
    before = stats(http)
    text = f"This product is amazing! {uuid.uuid4()}"
    response = http.post(
        "/feedback",
        json={"text": text, "model_prediction": "positive", "user_label": "positive"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Feedback recorded"
    record = body["feedback"]
    assert record["text"] == text
    assert record["user_label"] == "positive"
    assert int(record["id"]) > 0  # int64 renders as a string in proto3 JSON

    disagree = http.post(
        "/feedback",
        json={
            "text": f"meh {uuid.uuid4()}",
            "model_prediction": "Positive",
            "user_label": "NEUTRAL",
        },
    ).json()["feedback"]
    assert disagree["model_prediction"] == "positive"
    assert disagree["user_label"] == "neutral"
    assert int(disagree["id"]) > int(record["id"])

    after = stats(http)
    assert after["total"] == before["total"] + 2  # type: ignore[operator]
    assert after["disagreements"] == before["disagreements"] + 1  # type: ignore[operator]
    assert after["latest_id"] == disagree["id"]
    listed = {r["id"]: r for r in all_feedback(http)}
    assert listed[record["id"]]["text"] == text
    ids = [int(i) for i in listed]  # type: ignore[call-overload]
    assert ids == sorted(ids)


def test_grpc_feedback_direct(mesh: RunningMesh, channel_to: Channels) -> None:
    stub = pb_grpc.FeedbackServiceStub(channel_to("feedback"))
    before = stub.GetFeedbackStats(pb.GetFeedbackStatsRequest(), timeout=5)
    answer = stub.SubmitFeedback(
        pb.SubmitFeedbackRequest(
            text="Terrible battery life", user_label="negative", model_prediction="positive"
        ),
        timeout=5,
    )
    assert answer.feedback.id > before.latest_id
    assert answer.feedback.created_at.seconds > 0
    after = stub.GetFeedbackStats(pb.GetFeedbackStatsRequest(), timeout=5)
    assert after.total == before.total + 1
    assert after.by_label["negative"] == before.by_label["negative"] + 1
    assert after.disagreements == before.disagreements + 1


def test_grpc_through_envoy(mesh: RunningMesh, channel_to: Channels) -> None:
    stub = pb_grpc.FeedbackServiceStub(channel_to("envoy"))
    answer = stub.SubmitFeedback(
        pb.SubmitFeedbackRequest(text="Works as described", user_label="neutral"), timeout=5
    )
    page = stub.ListFeedback(
        pb.ListFeedbackRequest(page_token=str(answer.feedback.id - 1), page_size=1), timeout=5
    )
    assert [r.text for r in page.feedback] == ["Works as described"]


def test_idempotency_key_stores_once(mesh: RunningMesh, http: httpx.Client) -> None:
    key = str(uuid.uuid4())
    payload = {"text": "Arrived broken", "user_label": "negative", "idempotency_key": key}
    first = http.post("/feedback", json=payload).json()
    total = stats(http)["total"]
    second = http.post("/feedback", json=payload).json()
    assert second["duplicate"] is True
    assert second["feedback"]["id"] == first["feedback"]["id"]
    assert stats(http)["total"] == total


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_feedback_survives_a_restart(mesh: RunningMesh, http: httpx.Client, how: int) -> None:
    text = f"Kept across restarts {uuid.uuid4()}"
    stored = http.post("/feedback", json={"text": text, "user_label": "positive"}).json()
    os.kill(mesh.pid("feedback"), how)
    mesh.wait_for_health(503, timeout=10)
    mesh.wait_for_health(200, timeout=30)
    # Envoy's own health check takes the restarted service back within a second.
    deadline = time.monotonic() + 5
    while http.get("/feedback/stats").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    texts = {r["id"]: r["text"] for r in all_feedback(http)}
    assert texts[stored["feedback"]["id"]] == text
