"""ModelInitService: protobuf <-> ModelInit's domain logic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from sentiloop.core import aws
from sentiloop.core.clients import Clients
from sentiloop.core.config import Settings
from sentiloop.core.convert import metrics_to_proto, timestamp
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.objectstore import ObjectStore, open_object_store
from sentiloop.core.server import ServiceApp
from sentiloop.core.validation import page_size, quoted
from sentiloop.model_init.adapters import GrpcRegistry, LocalEndpoint
from sentiloop.model_init.backends import LocalTrainingBackend, TrainingBackend
from sentiloop.model_init.datasets import ensure_dataset
from sentiloop.model_init.jobs import JobStore, TrainingJob, check_job_name
from sentiloop.model_init.manager import EndpointPort, ModelInit, NewTraining, check_preset
from sentiloop.notification.notify import Notifier
from sentiloop.v1 import model_init_pb2 as pb
from sentiloop.v1 import model_init_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def job_to_proto(job: TrainingJob) -> pb.TrainingJob:
    p = job.progress
    return pb.TrainingJob(
        job_name=job.name,
        status=job.status,
        secondary_status=job.secondary_status,
        creation_time=timestamp(job.created_at),
        end_time=timestamp(job.ended_at),
        model_artifacts=job.artifact,
        failure_reason=job.failure_reason,
        progress=pb.TrainingProgress(
            step=int(p.get("step", 0)),
            total_steps=int(p.get("total_steps", 0)),
            epoch=float(p.get("epoch", 0.0)),
            loss=float(p.get("loss", 0.0)),
        ),
        metrics=job.metrics,
        auto_deploy=job.auto_deploy,
        backend=job.backend,
        preset=job.preset,
    )


class ModelInitServicer(pb_grpc.ModelInitServiceServicer):
    def __init__(self, model_init: ModelInit, store: ObjectStore, default_preset: str) -> None:
        self._model_init = model_init
        self._store = store
        self._default_preset = default_preset

    async def Bootstrap(
        self, request: pb.BootstrapRequest, context: Context
    ) -> pb.BootstrapResponse:
        preset = check_preset(request.preset or self._default_preset)
        dataset = await asyncio.to_thread(ensure_dataset, self._store)
        job = await self._model_init.start_training(
            NewTraining(
                source="bootstrap",
                channels=dataset.channels,
                dataset_hash=dataset.content_hash,
                hyperparameters={"preset": preset},
                preset=preset,
                auto_deploy=request.auto_deploy,
            )
        )
        follow = f"follow it with GET /model-init/watch/{job.name}"
        return pb.BootstrapResponse(
            message=f"Training job {job.name} started"
            + (" and will be deployed when it completes" if job.auto_deploy else ""),
            job_name=job.name,
            training_job_name=job.name,
            status=job.status,
            auto_deploy=job.auto_deploy,
            estimated_time=self._model_init.training_time(preset),
            note=(
                f"The model deploys itself when training completes; {follow}."
                if job.auto_deploy
                else f"Deploy it with POST /model-init/deploy/{job.name} once it completes;"
                f" {follow}."
            ),
        )

    async def StartTrainingJob(
        self, request: pb.StartTrainingJobRequest, context: Context
    ) -> pb.StartTrainingJobResponse:
        hyperparameters = dict(request.hyperparameters)
        preset = check_preset(hyperparameters.get("preset") or self._default_preset)
        hyperparameters["preset"] = preset
        problems = {}
        if request.source not in ("bootstrap", "retraining"):
            problems["source"] = f"{quoted(request.source)} is not one of bootstrap, retraining"
        if not {"train", "validation"} <= set(request.channels):
            problems["channels"] = "must name at least the train and validation channels"
        for name, prefix in request.channels.items():
            if not prefix or ".." in prefix.split("/") or prefix.startswith("/"):
                problems[f"channels[{name}]"] = f"{quoted(prefix)} is not an object-store prefix"
        if problems:
            raise InvalidArgument(problems)
        job = await self._model_init.start_training(
            NewTraining(
                source=request.source,
                channels=dict(request.channels),
                dataset_hash=request.dataset_hash,
                hyperparameters=hyperparameters,
                preset=preset,
                auto_deploy=request.auto_deploy,
            )
        )
        return pb.StartTrainingJobResponse(job=job_to_proto(job))

    async def GetTrainingStatus(
        self, request: pb.GetTrainingStatusRequest, context: Context
    ) -> pb.GetTrainingStatusResponse:
        job = await self._model_init.get(check_job_name(request.job_name))
        return pb.GetTrainingStatusResponse(
            job=job_to_proto(job),
            job_name=job.name,
            status=job.status,
            creation_time=timestamp(job.created_at),
            training_end_time=timestamp(job.ended_at),
            model_artifacts=job.artifact,
        )

    async def WatchTrainingJob(
        self, request: pb.WatchTrainingJobRequest, context: Context
    ) -> AsyncIterator[pb.WatchTrainingJobResponse]:
        check_job_name(request.job_name)
        async for update in self._model_init.watch(request.job_name):
            yield pb.WatchTrainingJobResponse(
                job=job_to_proto(update.job),
                message=update.message,
                time=timestamp(update.time),
                done=update.done,
                test_metrics=metrics_to_proto(update.job.final_metrics.get("test"))
                if update.done
                else None,
            )

    async def ListTrainingJobs(
        self, request: pb.ListTrainingJobsRequest, context: Context
    ) -> pb.ListTrainingJobsResponse:
        jobs = await self._model_init.recent(page_size(request.page_size))
        return pb.ListTrainingJobsResponse(jobs=[job_to_proto(j) for j in jobs])

    async def StopTrainingJob(
        self, request: pb.StopTrainingJobRequest, context: Context
    ) -> pb.StopTrainingJobResponse:
        job = await self._model_init.stop(check_job_name(request.job_name))
        return pb.StopTrainingJobResponse(job=job_to_proto(job))

    async def Deploy(self, request: pb.DeployRequest, context: Context) -> pb.DeployResponse:
        gate = (
            json_format.MessageToDict(request.gate, preserving_proto_field_name=True)
            if request.HasField("gate")
            else None
        )
        deployment = await self._model_init.deploy(
            check_job_name(request.job_name), gate, request.register_only
        )
        version, status = deployment.version, deployment.endpoint
        answer = pb.DeployResponse(
            model_version=version,
            endpoint_name=self._model_init.endpoint_name,
            model_name=deployment.model_name,
        )
        if status is None:
            answer.message = (
                f"Training job {request.job_name} registered as model version {version}"
            )
            return answer
        answer.message = f"Training job {request.job_name} deployed as model version {version}"
        if status.status != "InService":
            answer.message += f"; the endpoint is {status.status}"
            if status.failure_reason:
                answer.message += f": {status.failure_reason}"
        answer.endpoint_status = answer.status = status.status
        answer.estimated_time = (
            "ready now" if status.status == "InService" else self._model_init.deploy_time
        )
        return answer

    async def GetEndpointStatus(
        self, request: pb.GetEndpointStatusRequest, context: Context
    ) -> pb.GetEndpointStatusResponse:
        status = await self._model_init.endpoint_status()
        return pb.GetEndpointStatusResponse(
            endpoint_name=self._model_init.endpoint_name,
            status=status.status,
            model_version=status.model_version,
            backend=aws.backend("SENTILOOP_ENDPOINT_BACKEND"),
            failure_reason=status.failure_reason,
            creation_time=timestamp(status.created_at),
            last_modified_time=timestamp(status.modified_at),
        )


def create_app(settings: Settings) -> ServiceApp:
    store = open_object_store(settings)
    jobs = JobStore(settings.service_dir("model_init") / "jobs.db")
    clients = Clients(settings)
    backend: TrainingBackend
    endpoint: EndpointPort
    deploy_timeout = 300.0
    if aws.backend("SENTILOOP_TRAINING_BACKEND") == "sagemaker":
        from sentiloop.model_init.sagemaker import SageMakerConfig, SageMakerTrainingBackend

        aws.require_remote_store(store, "SENTILOOP_TRAINING_BACKEND=sagemaker")
        config = SageMakerConfig.from_env()
        backend = SageMakerTrainingBackend(store, config, aws.sagemaker_client())
    else:
        backend = LocalTrainingBackend(store, settings.service_dir("model_init") / "jobs")
    if aws.backend("SENTILOOP_ENDPOINT_BACKEND") == "sagemaker":
        from sentiloop.model_init.sagemaker import SageMakerConfig, SageMakerEndpoint

        aws.require_remote_store(store, "SENTILOOP_ENDPOINT_BACKEND=sagemaker")
        endpoint = SageMakerEndpoint(SageMakerConfig.from_env(), aws.sagemaker_client())
        deploy_timeout = 1800.0  # creating a SageMaker endpoint takes 5-10 minutes
    else:
        endpoint = LocalEndpoint(clients)
    model_init = ModelInit(
        jobs,
        backend,
        GrpcRegistry(clients),
        endpoint,
        Notifier(clients).emit,
        deploy_timeout=deploy_timeout,
    )
    servicer = ModelInitServicer(model_init, store, settings.default_preset)

    async def startup() -> None:
        await model_init.recover()

    async def shutdown() -> None:
        # Cancelling the jobs' tasks ends their training processes; the jobs stay
        # InProgress and resume when the service starts again.
        await model_init.shutdown()
        await clients.close()
        jobs.close()

    return ServiceApp(
        name="model_init",
        register=lambda server: pb_grpc.add_ModelInitServiceServicer_to_server(servicer, server),
        startup=startup,
        shutdown=shutdown,
    )
