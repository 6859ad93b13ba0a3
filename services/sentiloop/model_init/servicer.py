"""ModelInitService: protobuf <-> ModelInit's domain logic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import json_format

from sentiloop.aws import config as aws
from sentiloop.core.clients import Clients
from sentiloop.core.config import Settings
from sentiloop.core.convert import metrics_to_proto, timestamp
from sentiloop.core.db import open_service_database
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.notify import Notifier
from sentiloop.core.objectstore import ObjectStore, open_object_store
from sentiloop.core.server import ServiceApp
from sentiloop.core.training import TrainingJob
from sentiloop.core.validation import page_size, quoted
from sentiloop.core.vocabulary import EndpointState
from sentiloop.data.datasets import (
    StoredDataset,
    ensure_dataset,
    get_dataset,
    is_dataset_id,
    list_datasets,
)
from sentiloop.data.importer import (
    NAME_PATTERN,
    ImportFile,
    Limits,
    import_dataset,
    read_source,
)
from sentiloop.model_init.adapters import GrpcRegistry, LocalEndpoint
from sentiloop.model_init.backends import LocalTrainingBackend, TrainingBackend
from sentiloop.model_init.jobs import JobStore, check_job_name
from sentiloop.model_init.manager import EndpointPort, ModelInit, NewTraining, check_preset
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


def dataset_to_proto(dataset: StoredDataset) -> pb.Dataset:
    files = {
        channel: pb.FileReport(
            rows_read=int(found.get("rows_read", 0)),
            duplicates_collapsed=int(found.get("duplicates_collapsed", 0)),
            conflicting_texts=int(found.get("conflicting_texts", 0)),
            conflicts=[str(c) for c in found.get("conflicts", [])],
        )
        for channel, found in dataset.report.items()
        if isinstance(found, dict)
    }
    return pb.Dataset(
        dataset_id=dataset.content_hash,
        name=dataset.name,
        kind=dataset.kind,
        source=dataset.source,
        counts={
            channel: pb.LabelCounts(
                negative=counts.get("Negative", 0),
                neutral=counts.get("Neutral", 0),
                positive=counts.get("Positive", 0),
                total=sum(counts.values()),
            )
            for channel, counts in dataset.counts.items()
        },
        create_time=timestamp(datetime.fromisoformat(dataset.created_at))
        if dataset.created_at
        else None,
        channels=dataset.channels,
        files=files,
        split=str(dataset.report.get("split", "")),
    )


class ModelInitServicer(pb_grpc.ModelInitServiceServicer):
    def __init__(
        self,
        model_init: ModelInit,
        store: ObjectStore,
        settings: Settings,
    ) -> None:
        self._model_init = model_init
        self._store = store
        self._default_preset = settings.default_preset
        self._endpoint_backend = settings.endpoint_backend
        self._limits = Limits(
            max_bytes=settings.dataset_max_bytes, max_text_length=settings.max_text_length
        )

    async def _import(self, name: str, files: dict[str, ImportFile]) -> tuple[StoredDataset, bool]:
        return await asyncio.to_thread(
            import_dataset, self._store, name or "imported", files, self._limits
        )

    async def _file(self, channel: str, file: pb.DatasetFile) -> ImportFile:
        if file.WhichOneof("source") == "uri":
            return await asyncio.to_thread(
                read_source, self._store, file.uri, file.format, self._limits
            )
        return ImportFile(file.content.encode(), f"{channel} content", file.format)

    async def _bootstrap_dataset(self, dataset: str) -> StoredDataset:
        if not dataset:
            return await asyncio.to_thread(ensure_dataset, self._store)
        if is_dataset_id(dataset):
            return await asyncio.to_thread(get_dataset, self._store, dataset, "dataset")
        file = await asyncio.to_thread(read_source, self._store, dataset, "", self._limits)
        name = dataset.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "imported"
        stored, _ = await self._import(name if NAME_PATTERN.match(name) else "imported",
                                       {"train": file})  # fmt: skip
        return stored

    async def Bootstrap(
        self, request: pb.BootstrapRequest, context: Context
    ) -> pb.BootstrapResponse:
        preset = check_preset(request.preset or self._default_preset)
        hyperparameters = {**request.hyperparameters, "preset": preset}
        if request.base_model:
            hyperparameters["base_model"] = request.base_model
        # Everything is checked before anything is imported or started: a mistake costs
        # seconds, not a failed job minutes later.
        await asyncio.to_thread(self._model_init.check_hyperparameters, hyperparameters)
        dataset = await self._bootstrap_dataset(request.dataset.strip())
        job = await self._model_init.start_training(
            NewTraining(
                source="bootstrap",
                channels=dataset.channels,
                dataset_hash=dataset.content_hash,
                hyperparameters=hyperparameters,
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
            dataset_id=dataset.content_hash,
        )

    async def ImportDataset(
        self, request: pb.ImportDatasetRequest, context: Context
    ) -> pb.ImportDatasetResponse:
        if not request.HasField("train") or not request.train.WhichOneof("source"):
            raise InvalidArgument({"train": "is required: a uri or the content of a file"})
        files = {
            channel: await self._file(channel, getattr(request, channel))
            for channel in ("train", "validation", "test")
            if request.HasField(channel) and getattr(request, channel).WhichOneof("source")
        }
        dataset, created = await self._import(request.name, files)
        return pb.ImportDatasetResponse(dataset=dataset_to_proto(dataset), created=created)

    async def UploadDataset(
        self, request_iterator: AsyncIterator[pb.UploadDatasetRequest], context: Context
    ) -> pb.UploadDatasetResponse:
        name = ""
        chunks: dict[str, list[bytes]] = {}
        sizes: dict[str, int] = {}
        formats: dict[str, str] = {}
        filenames: dict[str, str] = {}
        async for message in request_iterator:
            channel = message.channel or "train"
            if channel not in ("train", "validation", "test"):
                raise InvalidArgument(
                    {"channel": f"{quoted(channel)} is not one of train, validation, test"}
                )
            name = name or message.name
            formats[channel] = formats.get(channel) or message.format
            filenames[channel] = filenames.get(channel) or message.filename
            sizes[channel] = sizes.get(channel, 0) + len(message.chunk)
            if sizes[channel] > self._limits.max_bytes:  # stop reading: nothing is stored
                raise InvalidArgument(
                    {channel: f"is over the limit of {self._limits.max_bytes:,} bytes"
                     " (SENTILOOP_DATASET_MAX_BYTES)"}
                )  # fmt: skip
            chunks.setdefault(channel, []).append(message.chunk)
        if "train" not in chunks:
            raise InvalidArgument({"train": "the upload sent no train file"})
        files = {
            channel: ImportFile(
                b"".join(parts), filenames[channel] or f"uploaded {channel}", formats[channel]
            )
            for channel, parts in chunks.items()
        }
        dataset, created = await self._import(name, files)
        return pb.UploadDatasetResponse(dataset=dataset_to_proto(dataset), created=created)

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Context
    ) -> pb.ListDatasetsResponse:
        await asyncio.to_thread(ensure_dataset, self._store)  # the built-in one is always there
        datasets = await asyncio.to_thread(list_datasets, self._store)
        return pb.ListDatasetsResponse(datasets=[dataset_to_proto(d) for d in datasets])

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: Context
    ) -> pb.GetDatasetResponse:
        dataset = await asyncio.to_thread(get_dataset, self._store, request.dataset_id)
        return pb.GetDatasetResponse(dataset=dataset_to_proto(dataset))

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
        if status.status != EndpointState.IN_SERVICE:
            answer.message += f"; the endpoint is {status.status}"
            if status.failure_reason:
                answer.message += f": {status.failure_reason}"
        answer.endpoint_status = answer.status = status.status
        answer.estimated_time = (
            "ready now"
            if status.status == EndpointState.IN_SERVICE
            else self._model_init.deploy_time
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
            backend=self._endpoint_backend,
            failure_reason=status.failure_reason,
            creation_time=timestamp(status.created_at),
            last_modified_time=timestamp(status.modified_at),
        )


def create_app(settings: Settings) -> ServiceApp:
    store = open_object_store(settings)
    jobs = JobStore(open_service_database(settings, "model_init", "jobs.db"))
    clients = Clients(settings)
    backend: TrainingBackend
    endpoint: EndpointPort
    deploy_timeout = 300.0
    if settings.training_backend == "sagemaker":
        from sentiloop.aws.config import SageMakerConfig
        from sentiloop.aws.training import SageMakerTrainingBackend

        aws.require_remote_store(store, "SENTILOOP_TRAINING_BACKEND=sagemaker")
        config = SageMakerConfig.from_settings(settings)
        backend = SageMakerTrainingBackend(store, config, aws.sagemaker_client())
    else:
        backend = LocalTrainingBackend(store, settings.service_dir("model_init") / "jobs")
    if settings.endpoint_backend == "sagemaker":
        from sentiloop.aws.config import SageMakerConfig
        from sentiloop.aws.endpoint import SageMakerEndpoint

        aws.require_remote_store(store, "SENTILOOP_ENDPOINT_BACKEND=sagemaker")
        endpoint = SageMakerEndpoint(
            SageMakerConfig.from_settings(settings),
            aws.sagemaker_client(),
            autoscaling_client=aws.sagemaker_client("application-autoscaling"),
        )
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
    servicer = ModelInitServicer(model_init, store, settings)

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
