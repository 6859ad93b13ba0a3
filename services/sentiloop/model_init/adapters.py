"""ModelInit's ports implemented over the mesh's gRPC contracts."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import json_format

from sentiloop.core.clients import Clients, mesh_error
from sentiloop.core.convert import datetime_of, metrics_to_proto
from sentiloop.core.training import EndpointStatus, TrainingJob
from sentiloop.core.vocabulary import EndpointState
from sentiloop.v1 import common_pb2, inference_pb2, registry_pb2


class GrpcRegistry:
    def __init__(self, clients: Clients) -> None:
        self._clients = clients

    async def register(self, job: TrainingJob, gate: dict[str, Any]) -> str:
        # A version registered earlier for this job (before a restart) is reused.
        try:
            listed = await self._clients.registry.ListModels(
                registry_pb2.ListModelsRequest(), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("registry", error) from error
        for model in listed.models:
            if model.training_job_name == job.name:
                return str(model.version)
        request = registry_pb2.RegisterModelRequest(
            gate=json_format.ParseDict(gate, common_pb2.GateDecision()) if gate else None,
            path=job.artifact,
            source=job.source if job.source in ("bootstrap", "retraining") else "manual",
            training_job_name=job.name,
            dataset_hash=job.dataset_hash,
            test_metrics=metrics_to_proto(job.final_metrics.get("test")),
            validation_metrics=metrics_to_proto(job.final_metrics.get("validation")),
        )
        try:
            answer = await self._clients.registry.RegisterModel(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            raise mesh_error("registry", error) from error
        return str(answer.model.version)

    async def activate(self, version: str, reason: str) -> None:
        try:
            await self._clients.registry.ActivateModel(
                registry_pb2.ActivateModelRequest(version=version, reason=reason), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("registry", error) from error


class LocalEndpoint:
    """The local 'endpoint' is the InferenceService: it serves whatever version the
    registry has active, so deploying is activating, and its status is what the
    inference service reports."""

    name = "sentiloop-local"
    estimated_time = "a few seconds"  # loading a model in-process

    def __init__(self, clients: Clients) -> None:
        self._clients = clients

    @staticmethod
    def model_name(version: str, artifact: str) -> str:
        return version  # the version is loaded as it is: there is no separate model object

    async def deploy(self, version: str, artifact: str) -> None:
        return None

    async def _history(self) -> tuple[datetime | None, datetime | None]:
        """When the endpoint was created and last modified: the first and the latest
        activation in the registry (they survive restarts, unlike the loaded model)."""
        try:
            answer = await self._clients.registry.ListActivations(
                registry_pb2.ListActivationsRequest(), timeout=5
            )
        except grpc.aio.AioRpcError:
            return None, None
        if not answer.activations:
            return None, None
        newest, oldest = answer.activations[0], answer.activations[-1]
        return datetime_of(oldest, "activated_at"), datetime_of(newest, "activated_at")

    async def _serving(self) -> inference_pb2.GetServingStatusResponse | None:
        try:
            return await self._clients.inference.GetServingStatus(
                inference_pb2.GetServingStatusRequest(), timeout=5
            )
        except grpc.aio.AioRpcError:
            return None

    async def status(self) -> EndpointStatus:
        serving = await self._serving()
        if serving is None:
            return EndpointStatus("Unknown", failure_reason="the inference service is unreachable")
        if serving.status == EndpointState.NOT_DEPLOYED:
            return EndpointStatus(EndpointState.NOT_DEPLOYED)
        created, modified = await self._history()
        if serving.status == EndpointState.LOADING:
            state = EndpointState.UPDATING if serving.model_version else EndpointState.CREATING
            return EndpointStatus(state, serving.model_version, "", created, modified)
        return EndpointStatus(
            serving.status, serving.model_version, serving.failure_reason, created, modified
        )

    async def wait_in_service(self, version: str, timeout: float) -> EndpointStatus:
        deadline = time.monotonic() + timeout
        status = await self.status()
        seen = False  # InferenceService took up ``version`` (loading it, or failed to)
        while time.monotonic() < deadline:
            serving = await self._serving()
            if serving is not None:
                if serving.model_version == version and serving.status == EndpointState.IN_SERVICE:
                    return EndpointStatus(EndpointState.IN_SERVICE, version)
                if serving.target_version == version and serving.status == EndpointState.FAILED:
                    return EndpointStatus(
                        EndpointState.FAILED, serving.model_version, serving.failure_reason
                    )
                if serving.target_version == version:
                    seen = True
                elif seen:
                    # It failed and the registry went back to the answering version
                    # between two looks: the failure is in model.activation_failed.
                    return EndpointStatus(
                        EndpointState.FAILED,
                        serving.model_version,
                        f"{version} did not load; {serving.model_version} stays active"
                        " (GET /events?type_prefix=model.activation_failed says why)",
                    )
            await asyncio.sleep(0.2)
        status = await self.status()
        return status
