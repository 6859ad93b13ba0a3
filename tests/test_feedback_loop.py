"""The loop end to end on the real mesh (tiny preset): predictions, feedback citing
them, evaluation, retraining with the promotion gate, events, automatic triggering."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest

from sentiloop.testing import (
    REVIEWS,
    TINY_ENV,
    RunningMesh,
    give_feedback,
    metric_sum,
    scrape,
    start_mesh,
    wait_for,
)
from sentiloop.v1 import (
    notification_pb2,
    notification_pb2_grpc,
    retraining_pb2,
    retraining_pb2_grpc,
)


def bootstrap(client: httpx.Client) -> str:
    job = client.post("/model-init/bootstrap?auto_deploy=true", json={}).json()["job_name"]
    wait_for(lambda: client.get("/model-init/endpoint-status").json()["status"] == "InService", 180)
    return str(job)


class EventRecorder:
    """Collects events from a gRPC Subscribe stream in the background."""

    def __init__(self, address: str) -> None:
        self.events: list[Any] = []
        self._channel = grpc.insecure_channel(address)
        stub = notification_pb2_grpc.NotificationServiceStub(self._channel)
        self._stream = stub.Subscribe(notification_pb2.SubscribeRequest())
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for response in self._stream:
                self.events.append(response.event)
        except grpc.RpcError:
            pass

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()


@pytest.fixture(scope="module")
def loop_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(tmp_path_factory.mktemp("loop"), extra_env=TINY_ENV)
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(loop_mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=loop_mesh.url, headers=loop_mesh.operator_headers, timeout=600
    ) as http:
        yield http


@pytest.fixture(scope="module")
def first_run(loop_mesh: RunningMesh) -> dict[str, Any]:
    """The loop's first turn on the module's mesh: bootstrap, too few labels, then enough
    for a retraining run. Every test of the mesh builds on it, so it comes first whatever
    the order of the tests; the test below checks what it saw."""
    client = httpx.Client(base_url=loop_mesh.url, headers=loop_mesh.operator_headers, timeout=600)
    try:
        return run_the_loop_once(loop_mesh, client)
    finally:
        client.close()


def run_the_loop_once(loop_mesh: RunningMesh, client: httpx.Client) -> dict[str, Any]:
    bootstrap(client)
    early = give_feedback(client, 5, "early")
    # Feedback that cites a prediction takes its text, version and label from the log.
    assert early[0]["text"].startswith(REVIEWS[0][0]) and early[0]["model_version"] == "v1"
    assert early[0]["model_prediction"] in {"positive", "negative", "neutral"}
    refused = client.post("/retrain", json={})
    assert refused.status_code == 400
    assert "at least 10 labelled feedback samples; there are 5" in refused.json()["message"]
    assert (
        client.post(
            "/feedback", json={"prediction_id": "f" * 32, "user_label": "neutral"}
        ).status_code
        == 404
    )

    give_feedback(client, 25, "more")
    events = EventRecorder(loop_mesh.envoy_address)
    try:
        time.sleep(0.5)
        response = client.post("/retrain", json={})
        assert response.status_code == 200, response.text
        result = response.json()
        for field in (
            "message",
            "training_job_name",
            "test_accuracy",
            "validation_accuracy",
            "confusion_matrix",
            "confusion_matrix_labels",
        ):
            assert field in result
        assert result["confusion_matrix_labels"] == ["negative", "neutral", "positive"]
        assert len(result["confusion_matrix"]) == 3 and all(
            len(r) == 3 for r in result["confusion_matrix"]
        )
        assert sum(map(sum, result["confusion_matrix"])) == result["gate"]["test"]["samples"]
        assert result["model_version"] == "v2"
        gate = result["gate"]
        assert gate["decision"] in {"promoted", "rejected"} and gate["reason"]
        assert gate["baseline_version"] == "v1" and gate["tolerance"] == 0.01
        assert gate["feedback"]["samples"] > 0 and gate["test"]["samples"] > 0
        # Cross-fitted: the candidate trained on all 30 labels, and every one of them was
        # scored by a fold model that had not seen it.
        assert result["feedback_samples"] == gate["feedback"]["samples"] == 30
        assert gate["feedback"]["folds"] == 3 and gate["class_floor"] == 0.05
        # Both models' calibration on the test set (out-of-fold feedback has labels only).
        assert gate["ece_tolerance"] == 0.02 and "candidate_ece" not in gate["feedback"]
        assert 0 <= gate["test"]["candidate_ece"] <= 1 and 0 <= gate["test"]["baseline_ece"] <= 1
        registered = client.get("/models/v2").json()["model"]
        assert registered["gate"]["decision"] == gate["decision"]
        assert registered["source"] == "retraining"
        job = result["training_job_name"]
        wait_for(
            lambda: "model.rejected" in events.types() or "model.promoted" in events.types(), 30
        )
    finally:
        events.close()
    for_run = [
        e.type
        for e in events.events
        if e.type != "model.deployed" or gate["decision"] == "promoted"
    ]
    expected = [
        "retraining.triggered",
        "training.started",
        "training.completed",
        "model.registered",
    ]
    positions = [for_run.index(t) for t in expected]
    assert positions == sorted(positions), for_run
    verdict = "model.promoted" if gate["decision"] == "promoted" else "model.rejected"
    assert for_run.index(verdict) > positions[-1]
    triggered = next(e for e in events.events if e.type == "retraining.triggered")
    assert triggered.subject.startswith("run-") and triggered.attributes["trigger"] == "manual"
    started = next(e for e in events.events if e.type == "training.started")
    assert started.subject == job

    # The events are stored and listable too, newest first.
    listed = client.get("/events", params={"type_prefix": "training."}).json()["events"]
    assert listed[0]["subject"] == job and listed[0]["type"] == "training.completed"
    return result


def test_retrain_needs_ten_labels_then_runs_the_loop(first_run: dict[str, Any]) -> None:
    # The steps' own checks ran in the fixture; what the run answered:
    assert first_run["model_version"] == "v2" and first_run["feedback_samples"] == 30
    assert first_run["gate"]["decision"] in {"promoted", "rejected"}


def test_metrics_count_what_the_loop_did(first_run: dict[str, Any], client: httpx.Client) -> None:
    """GET /metrics (every process, merged) against what the API itself reports, read
    back to back, on the mesh that bootstrapped, took feedback and retrained."""
    stats = client.get("/feedback/stats").json()
    served = client.get("/predict/status").json()
    samples = scrape(client)
    # Feedback: each accepted record once, and disagreements as the stats count them.
    assert metric_sum(samples, "sentiloop_feedback_total") == stats["total"] >= 30
    assert metric_sum(samples, "sentiloop_feedback_disagreements_total") == stats["disagreements"]
    # Every predicted text is counted under its label and version, and went through the
    # batcher, whose batches hold exactly those texts.
    predicted = metric_sum(samples, "sentiloop_predictions_total", service="inference")
    assert predicted >= 30
    assert metric_sum(samples, "sentiloop_predictions_total", model_version="v1") >= 30
    labels = {lab["label"] for lab, _ in samples["sentiloop_predictions_total"]}
    assert labels <= {"negative", "neutral", "positive"}
    assert metric_sum(samples, "sentiloop_batch_size_sum") == predicted
    assert metric_sum(samples, "sentiloop_batch_queue_wait_seconds_count") >= 30
    assert metric_sum(samples, "sentiloop_batch_queue_depth") == 0
    # The retraining run and its gate decision; two training jobs (bootstrap, retrain).
    decision = first_run["gate"]["decision"]
    assert metric_sum(samples, "sentiloop_gate_decisions_total", decision=decision) >= 1
    assert metric_sum(samples, "sentiloop_retraining_runs_total", outcome=decision) >= 1
    assert (
        metric_sum(samples, "sentiloop_training_duration_seconds_count", outcome="Completed") >= 2
    )
    # The served version as an info metric, as GetServingStatus reports it.
    [(info, value)] = samples["sentiloop_served_model_info"]
    assert value == 1 and info["service"] == "inference"
    assert (info["version"], info["engine"], info["precision"]) == (
        served["model_version"],
        served["engine"],
        served["precision"],
    )
    # RPCs by service, method and code: the feedback calls, and the refused unknown id.
    submitted = metric_sum(
        samples, "sentiloop_rpc_duration_seconds_count", grpc_method="SubmitFeedback"
    )
    assert submitted >= 31
    assert (
        metric_sum(
            samples,
            "sentiloop_rpc_duration_seconds_count",
            grpc_service="sentiloop.v1.FeedbackService",
            grpc_method="SubmitFeedback",
            grpc_code="NOT_FOUND",
        )
        >= 1
    )


def test_the_gate_keeps_a_rejected_candidate_out_then_force_and_rollback(
    first_run: dict[str, Any], client: httpx.Client
) -> None:
    active = client.get("/models/active").json()["model"]["version"]
    give_feedback(client, 12, "flipped", flip=True)
    result = client.post("/retrain", json={"seed": 7}).json()
    candidate = result["model_version"]
    assert result["gate"]["decision"] == "rejected" and result["promoted"] is False
    assert client.get(f"/models/{candidate}").json()["model"]["status"] == "rejected"
    assert client.post("/predict", json={"text": "fine"}).json()["model_version"] == active

    forced = client.post("/retrain", json={"force_promotion": True, "seed": 8}).json()
    assert forced["gate"]["decision"] == "forced" and forced["promoted"] is True
    assert forced["gate"]["reason"].startswith("forced by an operator")
    new = forced["model_version"]
    wait_for(
        lambda: client.post("/predict", json={"text": "fine"}).json()["model_version"] == new, 60
    )
    assert client.get(f"/models/{new}").json()["model"]["gate"]["decision"] == "forced"

    rolled = client.post("/models/rollback", json={"reason": "forced one was wrong"}).json()
    assert rolled["model"]["version"] == active
    wait_for(
        lambda: client.post("/predict", json={"text": "fine"}).json()["model_version"] == active, 60
    )
    assert (
        client.get("/events", params={"type_prefix": "model.rolled_back"}).json()["events"][0][
            "subject"
        ]
        == active
    )


def test_compare_scores_a_retrained_candidate_out_of_fold(
    first_run: dict[str, Any], client: httpx.Client
) -> None:
    models = {m["version"]: m for m in client.get("/models").json()["models"]}
    retrained = next(m for m in models.values() if m["source"] == "retraining")
    answer = client.post(
        "/evaluate/compare",
        json={"candidate_path": retrained["path"], "baseline_version": "v1", "cross_fitted": True},
    )
    assert answer.status_code == 200, answer.text
    feedback = answer.json()["feedback"]
    assert (
        feedback["folds"] == 3 and feedback["samples"] == retrained["gate"]["feedback"]["samples"]
    )
    assert len(feedback["candidate_class_f1"]) == len(feedback["baseline_class_f1"]) == 3
    assert feedback["delta_ci_low"] <= feedback["delta_macro_f1_lower_bound"]

    # A bootstrap has no out-of-fold predictions; and one source of feedback at a time.
    missing = client.post(
        "/evaluate/compare", json={"candidate_path": models["v1"]["path"], "cross_fitted": True}
    )
    assert missing.status_code == 400 and "crossfit.csv" in missing.json()["message"]
    both = client.post(
        "/evaluate/compare",
        json={"candidate_path": retrained["path"], "cross_fitted": True, "feedback_key": "x.csv"},
    )
    assert both.status_code == 400 and "cross_fitted" in both.json()["message"]


def test_concurrent_retrain_calls_run_exactly_once(
    first_run: dict[str, Any], loop_mesh: RunningMesh
) -> None:
    with loop_mesh.operator_channel() as channel:
        stub = retraining_pb2_grpc.RetrainingServiceStub(channel)

        def retrain(_: int) -> tuple[str, str]:
            try:
                answer = stub.Retrain(retraining_pb2.RetrainRequest(return_immediately=True))
                return "OK", answer.training_job_name
            except grpc.RpcError as error:
                return error.code().name, error.details() or ""

        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(retrain, range(6)))
        started = [job for code, job in outcomes if code == "OK"]
        refused = [details for code, details in outcomes if code == "ALREADY_EXISTS"]
        assert len(started) == 1 and len(refused) == 5, outcomes
        assert all("already in progress" in details for details in refused)
        wait_for(
            lambda: not stub.GetPolicy(retraining_pb2.GetPolicyRequest()).running_job_name, 180
        )


def test_evaluate_keeps_the_original_fields_and_history(
    first_run: dict[str, Any], client: httpx.Client
) -> None:
    report = client.post("/evaluate", json={}).json()
    for field in ("accuracy", "total_samples", "correct_predictions", "feedback_count"):
        assert field in report
    stats = client.get("/feedback/stats").json()
    assert report["feedback_count"] == stats["total"]
    assert 0 < report["total_samples"] <= stats["total"]  # one sample per distinct text
    assert report["test_metrics"]["total_samples"] > 0
    # Calibration of the served probabilities on the test set; the feedback's metrics have
    # none (served answers are logged as labels only).
    assert 0 <= report["test_metrics"]["ece"] <= 1 and 0 <= report["test_metrics"]["brier"] <= 2
    assert "ece" not in report["feedback_metrics"] and "brier" not in report["feedback_metrics"]
    served = client.get("/models/active").json()["model"]["test_metrics"]
    assert 0 <= served["ece"] <= 1 and 0 <= served["brier"] <= 2  # as its training job measured
    assert report["model_version"] == client.get("/models/active").json()["model"]["version"]
    again = client.post("/evaluate", json={"model_version": "v1"}).json()
    history = client.get("/evaluations", params={"model_version": "v1"}).json()["evaluations"]
    assert history[0]["evaluation_id"] == again["evaluation_id"]
    assert client.post("/evaluate", json={"model_version": "v99"}).status_code == 404


def test_feedback_citing_an_id_with_other_text_is_refused(
    first_run: dict[str, Any], client: httpx.Client
) -> None:
    prediction = client.post("/predict", json={"text": "Great sound"}).json()
    response = client.post(
        "/feedback",
        json={
            "prediction_id": prediction["prediction_id"],
            "text": "Other text",
            "user_label": "positive",
        },
    )
    assert response.status_code == 400
    assert "differs from the text of the cited prediction" in response.text


# Far longer than any run takes, even on a loaded machine: a run that starts inside it
# was not held back by it.
COOLDOWN_SECONDS = 300


@pytest.fixture(scope="module")
def auto_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    env = TINY_ENV | {
        "SENTILOOP_RETRAIN_AUTO": "true",
        "SENTILOOP_RETRAIN_MIN_NEW_FEEDBACK": "12",
        "SENTILOOP_RETRAIN_COOLDOWN_SECONDS": str(COOLDOWN_SECONDS),
        "SENTILOOP_RETRAIN_QUIET_SECONDS": "2",
        "SENTILOOP_RETRAIN_MAX_WAIT_SECONDS": "30",
        "SENTILOOP_RETRAIN_POLL_SECONDS": "0.5",
    }
    running = start_mesh(tmp_path_factory.mktemp("auto"), extra_env=env)
    yield running
    assert running.stop() == 0


def automatic_runs(client: httpx.Client) -> list[dict[str, Any]]:
    """The policy's runs, oldest first."""
    events = client.get("/events", params={"type_prefix": "retraining.triggered"}).json()["events"]
    runs = [e for e in events if e["attributes"]["trigger"] == "policy"]
    return sorted(runs, key=lambda event: int(event["id"]))


def started_at(run: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(run["created_at"].replace("Z", "+00:00"))


def policy(client: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = client.get("/retrain/policy").json()
    return answer


def test_a_burst_is_one_run_and_a_backlog_skips_the_cooldown(auto_mesh: RunningMesh) -> None:
    with httpx.Client(
        base_url=auto_mesh.url, headers=auto_mesh.operator_headers, timeout=600
    ) as client:
        bootstrap(client)
        give_feedback(client, 10, "first")
        time.sleep(2)
        assert automatic_runs(client) == []
        assert policy(client)["state"] == "collecting"
        # Two clients cross the threshold together: the labels are still arriving, so
        # the policy waits for the burst to settle, then runs once on all of it.
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda tag: give_feedback(client, 3, tag), ["a", "b"]))
        waiting = policy(client)
        assert waiting["state"] == "settling", waiting
        assert waiting["new_feedback_since_last_run"] == 16 and waiting["next_run_time"]
        wait_for(lambda: len(automatic_runs(client)) == 1, 30)
        (first_run,) = automatic_runs(client)
        assert first_run["attributes"]["feedback_total"] == 16
        wait_for(lambda: policy(client)["state"] != "running", 180)
        # Past the threshold again after the run ended, within the cooldown: it waits,
        # and a restart of the retraining service changes nothing (all from the stores).
        give_feedback(client, 12, "second")
        time.sleep(3)
        assert len(automatic_runs(client)) == 1
        cooling = policy(client)
        assert cooling["state"] == "cooling_down", cooling
        os.kill(auto_mesh.pid("retraining"), signal.SIGTERM)
        auto_mesh.wait_for_health(503, timeout=10)
        auto_mesh.wait_for_health(200, timeout=60)
        # Envoy routes to the restarted process once its health check passes.
        after_restart = wait_for(
            lambda: (answer := client.get("/retrain/policy")).status_code == 200 and answer.json(),
            30,
        )
        assert after_restart["state"] == "cooling_down", after_restart
        assert after_restart["next_run_time"] == cooling["next_run_time"]
        assert len(automatic_runs(client)) == 1
        # An operator retrains by hand; labels that arrive while it trains are a backlog:
        # the policy starts the next run as soon as it ends, inside the cooldown.
        manual = client.post("/retrain", json={"return_immediately": True})
        assert manual.status_code == 200, manual.text
        wait_for(lambda: policy(client)["state"] == "running", 30)
        give_feedback(client, 12, "third")
        wait_for(lambda: len(automatic_runs(client)) == 2, 240, interval=0.5)
        second_run = automatic_runs(client)[-1]
        assert second_run["attributes"]["feedback_total"] == 16 + 12 + 12
        assert started_at(second_run) - started_at(first_run) < timedelta(seconds=COOLDOWN_SECONDS)
        final = policy(client)
        assert final["enabled"] is True and final["min_new_feedback"] == 12
