"""RetrainingService: protobuf <-> the retrainer, and the mesh port over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from google.protobuf import json_format

from sentiloop.core.clients import Clients, mesh_error
from sentiloop.core.config import Settings
from sentiloop.core.convert import datetime_of, list_value, timestamp
from sentiloop.core.db import open_service_database
from sentiloop.core.errors import NotFound, Unavailable
from sentiloop.core.notify import Notifier
from sentiloop.core.objectstore import ObjectStore, open_object_store
from sentiloop.core.server import ServiceApp
from sentiloop.data.datasets import StoredDataset, lineage_dataset, prune_snapshots
from sentiloop.data.scoring import Comparison
from sentiloop.retraining.gate import GateRules
from sentiloop.retraining.runs import RunStore
from sentiloop.retraining.service import (
    MIN_FEEDBACK,
    ActiveModel,
    FeedbackCounts,
    JobResult,
    Outcome,
    Policy,
    Retrainer,
)
from sentiloop.retraining.snapshot import Snapshot, build_snapshot
from sentiloop.retraining.trigger import Drift, Pending, TriggerRules
from sentiloop.v1 import (
    common_pb2,
    evaluation_pb2,
    feedback_pb2,
    inference_pb2,
    model_init_pb2,
    registry_pb2,
)
from sentiloop.v1 import retraining_pb2 as pb
from sentiloop.v1 import retraining_pb2_grpc as pb_grpc

log = logging.getLogger("sentiloop.retraining")
Context = grpc.aio.ServicerContext[Any, Any]


def _comparison(message: common_pb2.ModelComparison) -> Comparison:
    fields = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for name in ("candidate_class_f1", "baseline_class_f1"):
        fields[name] = tuple(fields[name])
    return Comparison(**fields)


class GrpcMesh:
    """The retrainer's view of the mesh."""

    def __init__(self, clients: Clients, store: ObjectStore) -> None:
        self._clients = clients
        self._store = store
        self.notify = Notifier(clients).emit

    async def feedback_counts(self, after_count: int = 0) -> FeedbackCounts:
        try:
            stats = await self._clients.feedback.GetFeedbackStats(
                feedback_pb2.GetFeedbackStatsRequest(after_count=after_count), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("feedback", error) from error
        return FeedbackCounts(
            total=int(stats.total),
            pending=Pending(
                count=int(stats.new_count),
                first_at=datetime_of(stats, "first_new_time"),
                latest_at=datetime_of(stats, "latest_time"),
            ),
        )

    async def export_feedback(self) -> bytes:
        try:
            snapshot = await self._clients.feedback.ExportFeedback(
                feedback_pb2.ExportFeedbackRequest(), timeout=60
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("feedback", error) from error
        return await asyncio.to_thread(self._store.get_bytes, snapshot.key)

    async def active_model(self) -> ActiveModel | None:
        try:
            answer = await self._clients.registry.GetModel(
                registry_pb2.GetModelRequest(version="active"), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise mesh_error("registry", error) from error
        return ActiveModel(answer.model.version, answer.model.path, answer.model.dataset_hash)

    async def drift(self) -> Drift | None:
        try:
            answer = await self._clients.inference.GetDrift(
                inference_pb2.GetDriftRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            # Every policy check asks; the policy's reason says it is unknown.
            log.debug("could not read the drift state: %s", error.code().name)
            return None
        return Drift(answer.state, answer.score, answer.threshold)

    async def base_dataset(self, dataset_hash: str) -> StoredDataset:
        return await asyncio.to_thread(lineage_dataset, self._store, dataset_hash)

    async def snapshot(self, base: StoredDataset, feedback: bytes) -> Snapshot:
        return await asyncio.to_thread(build_snapshot, self._store, base, feedback)

    async def prune_snapshots(self) -> list[str]:
        try:
            models = await self._clients.registry.ListModels(
                registry_pb2.ListModelsRequest(), timeout=30
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("registry", error) from error
        referenced = {m.dataset_hash for m in models.models}
        return await asyncio.to_thread(prune_snapshots, self._store, referenced)

    async def start_training(
        self, channels: dict[str, str], dataset_hash: str, hyperparameters: dict[str, str]
    ) -> str:
        try:
            answer = await self._clients.model_init.StartTrainingJob(
                model_init_pb2.StartTrainingJobRequest(
                    source="retraining",
                    channels=channels,
                    dataset_hash=dataset_hash,
                    hyperparameters=hyperparameters,
                ),
                timeout=60,
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("model_init", error) from error
        return str(answer.job.job_name)

    async def wait_for_job(self, job_name: str) -> JobResult:
        last = None
        # The stream can break when ModelInitService restarts; the job goes on, so
        # watch again (the first message of a new watch is the current state).
        for _ in range(30):
            try:
                async for update in self._clients.model_init.WatchTrainingJob(
                    model_init_pb2.WatchTrainingJobRequest(job_name=job_name)
                ):
                    last = update
                if last is not None and last.done:
                    break
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    raise NotFound(f"training job {job_name!r} disappeared") from error
            await asyncio.sleep(2)
        if last is None or not last.done:
            raise Unavailable(f"lost track of training job {job_name}")
        job = last.job
        return JobResult(
            status=job.status,
            failure_reason=job.failure_reason,
            artifact=job.model_artifacts,
            test_metrics=json_format.MessageToDict(
                last.test_metrics, preserving_proto_field_name=True
            ),
            validation_accuracy=float(job.metrics.get("validation_accuracy", 0.0)),
        )

    async def compare(
        self, candidate: str, baseline: str, seed: int
    ) -> tuple[Comparison, Comparison | None]:
        try:
            answer = await self._clients.evaluation.CompareModels(
                evaluation_pb2.CompareModelsRequest(
                    candidate_path=candidate,
                    baseline_version=baseline,
                    cross_fitted=True,
                    seed=seed,
                ),
                timeout=1800,
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("evaluation", error) from error
        feedback = _comparison(answer.feedback) if answer.HasField("feedback") else None
        return _comparison(answer.test), feedback

    async def register(self, job_name: str, gate: dict[str, Any], activate: bool) -> str:
        try:
            answer = await self._clients.model_init.Deploy(
                model_init_pb2.DeployRequest(
                    job_name=job_name,
                    register_only=not activate,
                    gate=json_format.ParseDict(gate, common_pb2.GateDecision()),
                ),
                timeout=900,
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("model_init", error) from error
        return str(answer.model_version)


def outcome_to_proto(outcome: Outcome) -> pb.RetrainResponse:
    test = outcome.test_metrics
    decision = outcome.decision
    return pb.RetrainResponse(
        message=outcome.message,
        training_job_name=outcome.job_name,
        test_accuracy=float(test.get("accuracy", 0.0)),
        validation_accuracy=outcome.validation_accuracy,
        confusion_matrix=list_value(
            [[int(x) for x in row] for row in test.get("confusion_matrix", [])]
        ),
        confusion_matrix_labels=test.get("confusion_matrix_labels", []),
        model_version=outcome.model_version,
        promoted=bool(decision and decision.promoted),
        gate=json_format.ParseDict(decision.as_dict(), common_pb2.GateDecision())
        if decision
        else None,
        feedback_samples=outcome.feedback_samples,
    )


class RetrainingServicer(pb_grpc.RetrainingServiceServicer):
    def __init__(self, retrainer: Retrainer) -> None:
        self._retrainer = retrainer

    async def Retrain(self, request: pb.RetrainRequest, context: Context) -> pb.RetrainResponse:
        outcome = await self._retrainer.retrain(
            wait=not request.return_immediately,
            force=request.force_promotion,
            recipe=request.recipe,
            seed=request.seed,
        )
        return outcome_to_proto(outcome)

    async def GetPolicy(
        self, request: pb.GetPolicyRequest, context: Context
    ) -> pb.GetPolicyResponse:
        policy = self._retrainer.policy
        state, pending, drift = await self._retrainer.trigger()
        return pb.GetPolicyResponse(
            enabled=policy.enabled,
            min_new_feedback=policy.trigger.min_new_feedback,
            cooldown_seconds=round(policy.trigger.cooldown_seconds),
            new_feedback_since_last_run=pending.count,
            running_job_name=await self._retrainer.running_job(),
            state=state.state,
            reason=state.reason,
            next_run_time=timestamp(state.next_run_at),
            quiet_seconds=round(policy.trigger.quiet_seconds),
            max_wait_seconds=round(policy.trigger.max_wait_seconds),
            first_pending_time=timestamp(pending.first_at),
            latest_label_time=timestamp(pending.latest_at),
            retrain_on_drift=policy.trigger.on_drift,
            drift_state=drift.state if drift else "",
            next_run_trigger=state.trigger,
        )


def load_policy(settings: Settings) -> Policy:
    return Policy(
        enabled=settings.retrain_auto,
        trigger=TriggerRules(
            min_new_feedback=settings.retrain_min_new_feedback,
            quiet_seconds=settings.retrain_quiet_seconds,
            max_wait_seconds=settings.retrain_max_wait_seconds,
            cooldown_seconds=settings.retrain_cooldown_seconds,
            on_drift=settings.retrain_on_drift,
            min_total_feedback=MIN_FEEDBACK,
        ),
        folds=settings.retrain_folds,
        gate=GateRules(
            tolerance=settings.gate_tolerance,
            class_floor=settings.gate_class_floor,
            min_gain=settings.gate_min_gain,
            ece_tolerance=settings.gate_ece_tolerance,
            shadow_min_labelled=settings.gate_shadow_min_labelled,
        ),
        preset=settings.default_preset,
        seed=settings.retrain_seed,
        replay_ratio=settings.retrain_replay_ratio,
        balance_feedback=settings.retrain_balance_feedback,
        feedback_weight=settings.retrain_feedback_weight,
        epochs=settings.retrain_epochs,
        learning_rate=settings.retrain_learning_rate,
    )


def create_app(settings: Settings) -> ServiceApp:
    store = open_object_store(settings)
    runs = RunStore(open_service_database(settings, "retraining", "runs.db"))
    clients = Clients(settings)
    retrainer = Retrainer(runs, GrpcMesh(clients, store), load_policy(settings))
    servicer = RetrainingServicer(retrainer)
    interval = settings.retrain_poll_seconds
    tasks: list[asyncio.Task[None]] = []

    async def startup() -> None:
        await retrainer.recover(starting=True)
        tasks.append(asyncio.create_task(retrainer.run_policy(interval)))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await retrainer.shutdown()
        await clients.close()
        runs.close()

    return ServiceApp(
        name="retraining",
        register=lambda server: pb_grpc.add_RetrainingServiceServicer_to_server(servicer, server),
        startup=startup,
        shutdown=shutdown,
    )
