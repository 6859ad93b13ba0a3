"""ModelRegistryService: protobuf <-> the model registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any

import grpc
from google.protobuf import json_format

from sentiloop.aws import config as aws
from sentiloop.aws.model_packages import ModelPackageMirror
from sentiloop.core.artifacts import check_artifact
from sentiloop.core.clients import Clients
from sentiloop.core.config import Settings
from sentiloop.core.convert import metrics_from_proto, metrics_to_proto, timestamp
from sentiloop.core.db import open_service_database
from sentiloop.core.follow import EventFollower
from sentiloop.core.notify import Notifier
from sentiloop.core.objectstore import open_object_store
from sentiloop.core.server import ServiceApp
from sentiloop.core.serving import ServingState
from sentiloop.core.vocabulary import EventType
from sentiloop.data.shadow import ShadowReport, ShadowRule
from sentiloop.registry.service import Registry
from sentiloop.registry.store import ModelRegistry, ModelVersion, NewModel
from sentiloop.v1 import common_pb2, notification_pb2
from sentiloop.v1 import registry_pb2 as pb
from sentiloop.v1 import registry_pb2_grpc as pb_grpc

log = logging.getLogger("sentiloop.registry")


def serving_state_of(event: notification_pb2.Event) -> ServingState:
    return ServingState.from_attributes(json_format.MessageToDict(event.attributes))


Context = grpc.aio.ServicerContext[Any, Any]


def to_proto(model: ModelVersion, endpoint_status: str = "") -> pb.ModelVersion:
    return pb.ModelVersion(
        version=model.version,
        path=model.path,
        accuracy=model.accuracy,
        is_active=model.is_active,
        source=model.source,
        endpoint_status=endpoint_status if model.is_active else "",
        training_job_name=model.training_job_name,
        dataset_hash=model.dataset_hash,
        test_metrics=metrics_to_proto(model.test_metrics),
        validation_metrics=metrics_to_proto(model.validation_metrics),
        created_at=timestamp(model.created_at),
        status=model.status,
        gate=json_format.ParseDict(model.gate, common_pb2.GateDecision()) if model.gate else None,
        engine=model.engine,
        precision=model.precision,
        shadow=json_format.ParseDict(model.shadow, common_pb2.ShadowReport())
        if model.shadow
        else None,
    )


class ModelRegistryServicer(pb_grpc.ModelRegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        models = await self._registry.versions()
        statuses = await self._registry.endpoint_statuses(models)
        return pb.ListModelsResponse(
            models=[to_proto(m, statuses.get(m.version, "")) for m in models], count=len(models)
        )

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.GetModelResponse:
        model = await self._registry.get(request.version)
        statuses = await self._registry.endpoint_statuses([model])
        return pb.GetModelResponse(model=to_proto(model, statuses.get(model.version, "")))

    async def RegisterModel(
        self, request: pb.RegisterModelRequest, context: Context
    ) -> pb.RegisterModelResponse:
        new = NewModel(
            path=request.path,
            source=request.source or "manual",
            training_job_name=request.training_job_name,
            dataset_hash=request.dataset_hash,
            test_metrics=metrics_from_proto(request.test_metrics),
            validation_metrics=metrics_from_proto(request.validation_metrics),
            gate=json_format.MessageToDict(request.gate, preserving_proto_field_name=True)
            if request.HasField("gate")
            else {},
        )
        return pb.RegisterModelResponse(model=to_proto(await self._registry.register(new)))

    async def ActivateModel(
        self, request: pb.ActivateModelRequest, context: Context
    ) -> pb.ActivateModelResponse:
        model, previous = await self._registry.activate(
            request.version, request.reason, request.force
        )
        return pb.ActivateModelResponse(model=to_proto(model), previous_version=previous)

    async def RecordShadowReport(
        self, request: pb.RecordShadowReportRequest, context: Context
    ) -> pb.RecordShadowReportResponse:
        report = ShadowReport.from_dict(
            json_format.MessageToDict(request.report, preserving_proto_field_name=True)
        )
        model = await self._registry.record_shadow(request.version, report)
        return pb.RecordShadowReportResponse(model=to_proto(model))

    async def Rollback(self, request: pb.RollbackRequest, context: Context) -> pb.RollbackResponse:
        model, rolled_back = await self._registry.rollback(request.reason)
        return pb.RollbackResponse(model=to_proto(model), rolled_back_version=rolled_back)

    async def ListActivations(
        self, request: pb.ListActivationsRequest, context: Context
    ) -> pb.ListActivationsResponse:
        activations = await self._registry.activations()
        return pb.ListActivationsResponse(
            activations=[
                pb.Activation(
                    version=a.version,
                    previous_version=a.previous_version,
                    kind=a.kind,
                    reason=a.reason,
                    activated_at=timestamp(a.activated_at),
                )
                for a in activations
            ]
        )


def create_app(settings: Settings) -> ServiceApp:
    registry = ModelRegistry(open_service_database(settings, "registry", "registry.db"))
    clients = Clients(settings)
    mirror = None
    if settings.endpoint_backend == "sagemaker":
        from sentiloop.aws.config import SageMakerConfig

        mirror = ModelPackageMirror(SageMakerConfig.from_settings(settings), aws.sagemaker_client())
        mirror.ensure_group()
    store = open_object_store(settings)
    domain = Registry(
        registry,
        Notifier(clients).emit,
        partial(check_artifact, store),
        mirror=mirror,
        shadow_rule=ShadowRule(settings.gate_tolerance, settings.gate_shadow_min_labelled),
    )
    servicer = ModelRegistryServicer(domain)
    tasks: list[asyncio.Task[None]] = []

    async def on_event(event: notification_pb2.Event) -> None:
        await domain.serving_changed(serving_state_of(event), event.id)

    async def catch_up() -> None:
        # The newest announcement in the event log covers whatever the stream missed
        # (the registry's first start, or events older than the kept one's id).
        try:
            answer = await clients.notification.ListEvents(
                notification_pb2.ListEventsRequest(
                    type_prefix=EventType.SERVING_CHANGED, page_size=1
                ),
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            log.info("cannot read the event log (%s)", error.code().name)
            return
        for event in answer.events:
            await on_event(event)

    async def startup() -> None:
        follower = EventFollower(clients, [EventType.SERVING_CHANGED], on_event, catch_up)
        follower.last_id = await domain.last_serving_event()
        tasks.append(asyncio.create_task(follower.run()))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await clients.close()
        registry.close()

    return ServiceApp(
        name="registry",
        register=lambda server: pb_grpc.add_ModelRegistryServiceServicer_to_server(
            servicer, server
        ),
        startup=startup,
        shutdown=shutdown,
    )
