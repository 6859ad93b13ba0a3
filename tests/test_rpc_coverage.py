"""The RPCs no other test calls on their success path, over gRPC through Envoy as an
engineer's generated stubs call them (tiny preset): PredictBatch, GetPrediction,
ExportFeedback, StartTrainingJob, ListTrainingJobs, StopTrainingJob, RegisterModel,
ActivateModel, CompareModels."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from sentiloop.testing import TINY_ENV, RunningMesh, start_mesh, wait_for
from sentiloop.v1 import (
    evaluation_pb2,
    evaluation_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    model_init_pb2,
    model_init_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    mesh: RunningMesh = start_mesh(tmp_path_factory.mktemp("rpcs"), extra_env=TINY_ENV)
    try:
        with mesh.operator_channel() as envoy:
            yield envoy
    finally:
        assert mesh.stop() == 0


def test_the_rpcs_without_another_success_test(channel: grpc.Channel) -> None:
    model_init = model_init_pb2_grpc.ModelInitServiceStub(channel)
    inference = inference_pb2_grpc.InferenceServiceStub(channel)
    feedback = feedback_pb2_grpc.FeedbackServiceStub(channel)
    registry = registry_pb2_grpc.ModelRegistryServiceStub(channel)
    evaluation = evaluation_pb2_grpc.EvaluationServiceStub(channel)

    boot = model_init.Bootstrap(model_init_pb2.BootstrapRequest(auto_deploy=True))
    wait_for(
        lambda: (
            model_init.GetEndpointStatus(model_init_pb2.GetEndpointStatusRequest()).status
            == "InService"
        ),
        120,
    )

    texts = ["Works great, love it", "Broke after one day", "It is a phone"]
    batch = inference.PredictBatch(inference_pb2.PredictBatchRequest(texts=texts))
    assert [p.text for p in batch.predictions] == texts
    assert all(p.model_version == "v1" and p.prediction_id for p in batch.predictions)
    logged = inference.GetPrediction(
        inference_pb2.GetPredictionRequest(prediction_id=batch.predictions[1].prediction_id)
    )
    assert logged.prediction.text == texts[1]

    for prediction, label in zip(
        batch.predictions, ["positive", "negative", "neutral"], strict=True
    ):
        feedback.SubmitFeedback(
            feedback_pb2.SubmitFeedbackRequest(
                prediction_id=prediction.prediction_id, user_label=label
            )
        )
    export = feedback.ExportFeedback(feedback_pb2.ExportFeedbackRequest())
    assert export.record_count == 3 and export.key and len(export.content_hash) == 64

    jobs = model_init.ListTrainingJobs(model_init_pb2.ListTrainingJobsRequest(page_size=10))
    assert [j.job_name for j in jobs.jobs] == [boot.job_name]
    assert jobs.jobs[0].status == "Completed"

    builtin = model_init.ListDatasets(model_init_pb2.ListDatasetsRequest()).datasets[0]
    started = model_init.StartTrainingJob(
        model_init_pb2.StartTrainingJobRequest(
            source="bootstrap",
            channels=dict(builtin.channels),
            dataset_hash=builtin.dataset_id,
            hyperparameters={"preset": "tiny", "max_steps": "100000"},
        )
    ).job
    assert started.status == "InProgress" and started.preset == "tiny"
    stopping = model_init.StopTrainingJob(
        model_init_pb2.StopTrainingJobRequest(job_name=started.job_name)
    ).job
    assert stopping.status in ("Stopping", "Stopped")
    wait_for(
        lambda: (
            model_init.GetTrainingStatus(
                model_init_pb2.GetTrainingStatusRequest(job_name=started.job_name)
            ).status
            == "Stopped"
        ),
        60,
    )

    v1 = registry.GetModel(registry_pb2.GetModelRequest(version="v1")).model
    registered = registry.RegisterModel(
        registry_pb2.RegisterModelRequest(path=v1.path, source="manual")
    ).model
    assert registered.version == "v2" and registered.source == "manual"
    assert not registered.is_active
    activated = registry.ActivateModel(
        registry_pb2.ActivateModelRequest(version="v2", reason="coverage")
    )
    assert activated.model.is_active and activated.previous_version == "v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = inference.GetServingStatus(inference_pb2.GetServingStatusRequest())
        if status.model_version == "v2" and status.status == "InService":
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"v2 is not served: {status}")

    compared = evaluation.CompareModels(
        evaluation_pb2.CompareModelsRequest(candidate_path=v1.path, baseline_version="v2")
    )
    # The same weights: every prediction agrees, so the difference is exactly zero.
    assert compared.baseline_version == "v2" and compared.test.samples > 0
    assert compared.test.delta_macro_f1 == 0.0
    assert compared.test.candidate_macro_f1 == compared.test.baseline_macro_f1
