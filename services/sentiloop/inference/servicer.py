"""InferenceService: protobuf <-> the predictor, plus the task that keeps the served
model in step with the registry's active version."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

import grpc

from sentiloop.aws import config as aws
from sentiloop.core import metrics
from sentiloop.core.clients import Clients
from sentiloop.core.config import Settings
from sentiloop.core.convert import datetime_of, timestamp
from sentiloop.core.db import open_service_database
from sentiloop.core.errors import FailedPrecondition
from sentiloop.core.follow import EventFollower
from sentiloop.core.notify import Notifier
from sentiloop.core.objectstore import open_object_store
from sentiloop.core.scripts import load_script
from sentiloop.core.server import ServiceApp
from sentiloop.core.serving import ServingState
from sentiloop.core.vocabulary import EndpointState, EventType
from sentiloop.data.shadow import ShadowReport
from sentiloop.inference.batching import Batcher
from sentiloop.inference.drift import NO_MODEL, Crossings, DriftMonitor, DriftReport, DriftRules
from sentiloop.inference.drift import read_training_texts as drift_training_texts
from sentiloop.inference.drift_watch import DriftWatcher
from sentiloop.inference.engine import Prediction, PredictionLog, Predictor, engine_threads
from sentiloop.inference.shadow import Score, ShadowController, ShadowRunner, ShadowStore
from sentiloop.inference.shadow_mesh import GrpcShadowMesh, report_to_proto
from sentiloop.v1 import inference_pb2 as pb
from sentiloop.v1 import inference_pb2_grpc as pb_grpc
from sentiloop.v1 import notification_pb2, registry_pb2

log = logging.getLogger("sentiloop.inference")
DEFAULT_RECENT_PREDICTIONS = 1000
# Under gRPC's default 4 MiB message limit: 5000 texts of 5000 characters would not be.
RECENT_PREDICTIONS_MAX_BYTES = 3 * 1024 * 1024
Context = grpc.aio.ServicerContext[Any, Any]


def to_proto(prediction: Prediction) -> pb.PredictResponse:
    return pb.PredictResponse(
        text=prediction.text,
        label=prediction.label,
        confidence=prediction.confidence,
        scores=prediction.scores,
        model_version=prediction.model_version,
        prediction_id=prediction.id,
    )


class ServingPredictor(Protocol):
    """What the servicer needs of a predictor: in-process (engine.Predictor) or a
    SageMaker endpoint (sagemaker_runtime.SageMakerPredictor)."""

    state: ServingState

    def check(self, texts: list[str]) -> None: ...

    def predict(self, texts: list[str]) -> list[Prediction]: ...


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(
        self,
        predictor: ServingPredictor,
        log: PredictionLog,
        settings: Settings,
        in_flight: int = 1,
        drift: DriftWatcher | None = None,
        shadow: ShadowController | None = None,
    ) -> None:
        self._predictor = predictor
        self._log = log
        self.drift = drift
        self.shadow = shadow
        self._settings = settings
        # In-process, one thread runs the model (torch already uses every core for one
        # batch); a remote endpoint takes ``in_flight`` batches at once.
        self._executor = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="predict")
        self._batcher: Batcher[Prediction] = Batcher(
            predictor.predict,
            self._executor,
            max_batch=settings.inference_max_batch,
            max_queue=settings.inference_max_queue,
            max_wait=settings.inference_batch_wait_seconds,
            max_in_flight=in_flight,
        )
        self._dispatcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._batcher.run())

    async def _predict(self, texts: list[str]) -> list[Prediction]:
        self._predictor.check(texts)  # a bad request fails alone, before it joins a batch
        predictions = await self._batcher.predict(texts)
        metrics.count_predictions((p.label, p.model_version) for p in predictions)
        if self.shadow is not None:
            self.shadow.offer(predictions)  # answered already; the shadow never holds it up
        return predictions

    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        [prediction] = await self._predict([request.text])
        return to_proto(prediction)

    async def PredictBatch(
        self, request: pb.PredictBatchRequest, context: Context
    ) -> pb.PredictBatchResponse:
        predictions = await self._predict(list(request.texts))
        return pb.PredictBatchResponse(
            predictions=[to_proto(p) for p in predictions],
            model_version=predictions[0].model_version,
        )

    async def GetPrediction(
        self, request: pb.GetPredictionRequest, context: Context
    ) -> pb.GetPredictionResponse:
        prediction = await asyncio.to_thread(self._log.get, request.prediction_id)
        return pb.GetPredictionResponse(
            prediction=to_proto(prediction), created_at=timestamp(prediction.created_at)
        )

    async def GetServingStatus(
        self, request: pb.GetServingStatusRequest, context: Context
    ) -> pb.GetServingStatusResponse:
        state = self._predictor.state
        return pb.GetServingStatusResponse(
            status=state.status,
            model_version=state.model_version,
            target_version=state.target_version,
            failure_reason=state.failure_reason,
            loaded_at=timestamp(state.loaded_at),
            engine=state.engine,
            precision=state.precision,
        )

    async def ListRecentPredictions(
        self, request: pb.ListRecentPredictionsRequest, context: Context
    ) -> pb.ListRecentPredictionsResponse:
        predictions = await asyncio.to_thread(
            self._log.recent,
            request.page_size or DEFAULT_RECENT_PREDICTIONS,
            datetime_of(request, "since"),
        )
        response = pb.ListRecentPredictionsResponse()
        size = 0
        for p in predictions:
            logged = pb.LoggedPrediction(
                id=p.id,
                text=p.text,
                label=p.label,
                confidence=p.confidence,
                scores=p.scores,
                model_version=p.model_version,
                created_at=timestamp(p.created_at),
            )
            size += logged.ByteSize() + 8  # + the field's tag and length
            if size > RECENT_PREDICTIONS_MAX_BYTES:
                break
            response.predictions.append(logged)
        return response

    def _shadow_controller(self) -> ShadowController:
        if self.shadow is None:
            raise FailedPrecondition(
                "shadow evaluation loads the candidate in-process: it needs"
                " SENTILOOP_ENDPOINT_BACKEND=local"
            )
        return self.shadow

    async def StartShadow(
        self, request: pb.StartShadowRequest, context: Context
    ) -> pb.StartShadowResponse:
        report = await self._shadow_controller().start(request.version, request.duration_seconds)
        return pb.StartShadowResponse(report=report_to_proto(report))

    async def StopShadow(
        self, request: pb.StopShadowRequest, context: Context
    ) -> pb.StopShadowResponse:
        report = await self._shadow_controller().stop()
        return pb.StopShadowResponse(report=report_to_proto(report))

    async def GetShadowReport(
        self, request: pb.GetShadowReportRequest, context: Context
    ) -> pb.GetShadowReportResponse:
        report = await self.shadow.report() if self.shadow is not None else ShadowReport()
        return pb.GetShadowReportResponse(report=report_to_proto(report))

    async def GetDrift(self, request: pb.GetDriftRequest, context: Context) -> pb.GetDriftResponse:
        if self.drift is None:
            settings = self._settings
            report = DriftReport(
                NO_MODEL,
                "drift is scored for a model served in-process; a SageMaker endpoint's model"
                " is not loaded here",
                settings.drift_threshold,
                settings.drift_min_window,
                settings.drift_window,
            )
        else:
            report = self.drift.report
        return pb.GetDriftResponse(
            state=report.state,
            score=report.score,
            token_divergence=report.token_divergence,
            confidence_shift=report.confidence_shift,
            threshold=report.threshold,
            window_size=report.window_size,
            min_window=report.min_window,
            max_window=report.max_window,
            reference_version=report.reference_version,
            reference_dataset=report.reference_dataset,
            computed_at=timestamp(report.computed_at),
            reason=report.reason,
        )

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        self._executor.shutdown(wait=True)


REGISTRY_WAIT_SECONDS = 30.0


class ServingAnnouncer:
    """Announces each change of what this service serves as a ``serving.changed`` event,
    which the registry keeps. Publishing is best effort, so the latest state is published
    again, with backoff, until NotificationService takes it: the registry converges on
    the truth instead of keeping a stale state (only the latest state matters)."""

    def __init__(self, notify: Callable[..., Awaitable[bool]], max_delay: float = 10.0) -> None:
        self._notify = notify
        self._max_delay = max_delay
        self._wanted: ServingState | None = None
        self._announced: ServingState | None = None
        self._changed = asyncio.Event()
        self._published = asyncio.Condition()

    async def announce(self, state: ServingState, wait: float = 2.0) -> None:
        """Hands ``state`` to the publisher and waits (at most ``wait`` seconds) until it
        is published, so that callers can order it before what depends on it."""
        self._wanted = state
        self._changed.set()
        if wait <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait), self._published:
                await self._published.wait_for(
                    lambda: self._announced == state or self._wanted != state
                )

    async def run(self) -> None:
        delay = 0.5
        while True:
            await self._changed.wait()
            self._changed.clear()
            while (state := self._wanted) is not None and state != self._announced:
                if await self._notify(
                    EventType.SERVING_CHANGED,
                    state.subject,
                    state.describe(),
                    **state.as_attributes(),
                ):
                    delay = 0.5
                    async with self._published:
                        self._announced = state
                        self._published.notify_all()
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_delay)


class RegistryFollower:
    """Follows the registry's active version and loads it beside the served one, then
    swaps: requests in flight finish on the version they started with. Activations arrive
    as ``model.activated`` events; a slow poll of the registry is only the fallback for an
    event that was lost (events are published best effort)."""

    def __init__(
        self,
        predictor: Predictor,
        clients: Clients,
        announcer: ServingAnnouncer,
        fallback_interval: float,
    ) -> None:
        self._predictor = predictor
        self._clients = clients
        self._announcer = announcer
        self._interval = fallback_interval
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load")
        self._failed: tuple[str, float] | None = None
        self._sync_lock = asyncio.Lock()

    async def run(self) -> None:
        async def on_event(event: notification_pb2.Event) -> None:
            await self._sync_logged()

        follower = EventFollower(
            self._clients, [EventType.MODEL_ACTIVATED], on_event, self._sync_logged
        )
        events = asyncio.create_task(follower.run())
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self._sync_logged()
        finally:
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events

    async def _sync_logged(self) -> None:
        try:
            await self.sync_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("following the registry failed")

    async def first_sync(self, timeout: float) -> None:
        """Sync once the registry answers: the services start together, and reporting
        SERVING before knowing the active model would answer the first requests with
        "no model is deployed yet". After ``timeout`` the polling carries on alone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self.sync_once() and loop.time() < deadline:
            await asyncio.sleep(0.5)

    async def sync_once(self) -> bool:
        """Follow the registry's active version; False when the registry did not answer."""
        async with self._sync_lock:  # an event and the fallback poll may coincide
            return await self._sync()

    async def _set_state(self, state: ServingState) -> None:
        # An outcome is announced before GetServingStatus shows it: whoever waits there
        # for InService or Failed (a deploy) finds the registry told by then. The steps
        # before it (nothing deployed, loading) need not hold anything up, such as the
        # start of this service while NotificationService is still starting.
        settled = state.status in (EndpointState.IN_SERVICE, EndpointState.FAILED)
        await self._announcer.announce(state, wait=2.0 if settled else 0)
        self._predictor.state = state
        if state.status == EndpointState.IN_SERVICE:
            metrics.set_served_model(state.model_version, state.engine, state.precision)

    async def _sync(self) -> bool:
        try:
            answer = await self._clients.registry.GetModel(
                registry_pb2.GetModelRequest(version="active"), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                return False  # registry unreachable: keep serving what we have
            if self._predictor.current is None:
                await self._set_state(ServingState(EndpointState.NOT_DEPLOYED))
            return True
        version, artifact = answer.model.version, answer.model.path
        predictor = self._predictor
        current = predictor.current
        if current is not None and current.version == version:
            if predictor.state.status != EndpointState.IN_SERVICE:
                # Back to the served version (a rollback after a failed load): the
                # failure is over, and the state must say so.
                await self._set_state(current.serving_state())
            return True
        loop = asyncio.get_running_loop()
        if self._failed and self._failed[0] == version and loop.time() - self._failed[1] < 30:
            return True
        serving = current.version if current else ""
        await self._set_state(
            replace(
                predictor.state,
                status=EndpointState.LOADING,
                model_version=serving,
                target_version=version,
                failure_reason="",
            )
        )
        log.info("loading model version %s", version, extra={"fields": {"version": version}})
        try:
            loaded = await loop.run_in_executor(self._loader, predictor.load, version, artifact)
        except Exception as error:
            log.exception("loading model version %s failed", version)
            self._failed = (version, loop.time())
            await self._set_state(
                replace(
                    predictor.state,
                    status=EndpointState.FAILED,
                    failure_reason=f"loading {version} failed: {error}",
                )
            )
            return True
        predictor.current = loaded
        await self._set_state(loaded.serving_state())
        log.info("serving model version %s", version, extra={"fields": {"version": version}})
        return True

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


async def trained_on(clients: Clients, version: str) -> str:
    """The dataset ``version`` was trained on (its lineage in the registry); raises when
    the registry does not answer, so that no reference is built from a guess."""
    answer = await clients.registry.GetModel(
        registry_pb2.GetModelRequest(version=version), timeout=5
    )
    return str(answer.model.dataset_hash)


def create_app(settings: Settings) -> ServiceApp:
    service_dir = settings.service_dir("inference")
    # Not durable: the newest predictions may be lost in a crash of the machine or the
    # database server, in exchange for no flush to disk on the answer path (core/db.py).
    # The shadow tables share it (the report joins them with the predictions).
    predictions_db = open_service_database(settings, "inference", "predictions.db", durable=False)
    prediction_log = PredictionLog(predictions_db)
    clients = Clients(settings)
    poll_seconds = settings.inference_poll_seconds
    fallback_seconds = settings.inference_fallback_poll_seconds
    tasks: list[asyncio.Task[None]] = []
    announcer = ServingAnnouncer(Notifier(clients).emit)
    if settings.endpoint_backend == "sagemaker":
        # ModelInit deploys to the endpoint; this service calls it and keeps its log.
        from sentiloop.aws.config import SageMakerConfig
        from sentiloop.aws.endpoint import SageMakerEndpoint
        from sentiloop.inference.sagemaker_runtime import SageMakerPredictor

        endpoint = SageMakerEndpoint(
            SageMakerConfig.from_settings(settings), aws.sagemaker_client()
        )
        remote = SageMakerPredictor(
            aws.sagemaker_client("sagemaker-runtime"),
            endpoint,
            prediction_log,
            settings.max_text_length,
            refresh_seconds=poll_seconds,
        )
        servicer = InferenceServicer(
            remote, prediction_log, settings, settings.inference_endpoint_concurrency
        )

        async def follow() -> None:
            while True:
                await announcer.announce(await asyncio.to_thread(remote.refresh), wait=0)
                await asyncio.sleep(poll_seconds)

        async def startup() -> None:
            servicer.start()
            tasks.append(asyncio.create_task(announcer.run()))
            tasks.append(asyncio.create_task(follow()))

        follower = None
    else:
        threads = engine_threads(settings.inference_replicas)
        if settings.inference_replicas > 1:
            log.info(
                "%d replicas: the engine runs %d threads here", settings.inference_replicas, threads
            )
        store = open_object_store(settings)
        predictor = Predictor(
            store, service_dir / "models", prediction_log,
            settings.max_text_length, threads, settings.inference_engine,
        )  # fmt: skip
        drift = DriftWatcher(
            DriftMonitor(
                DriftRules(
                    window=settings.drift_window,
                    min_window=settings.drift_min_window,
                    threshold=settings.drift_threshold,
                    reference_texts=settings.drift_reference_texts,
                ),
                prediction_log.recent,
                partial(drift_training_texts, store),
                load_script("inference").predict_texts,
            ),
            lambda: predictor.current,
            partial(trained_on, clients),
            Notifier(clients).emit,
            settings.drift_interval_seconds,
            Crossings(open_service_database(settings, "inference", "drift.db")),
        )
        shadow_store = ShadowStore(predictions_db)
        predict_texts = load_script("inference").predict_texts

        def load_shadow(version: str, artifact: str) -> Score:
            return partial(predict_texts, predictor.load(version, artifact).model)

        shadow = ShadowController(
            shadow_store,
            ShadowRunner(shadow_store.record, settings.shadow_max_queue),
            GrpcShadowMesh(clients),
            load_shadow,
            lambda: predictor.current.version if predictor.current else "",
            settings.shadow_report_seconds,
        )
        servicer = InferenceServicer(
            predictor, prediction_log, settings, drift=drift, shadow=shadow
        )
        follower = RegistryFollower(predictor, clients, announcer, fallback_seconds)

        async def startup() -> None:
            # Serve the active model from the first request on, when there is one.
            assert follower is not None
            servicer.start()
            tasks.append(asyncio.create_task(announcer.run()))
            await follower.first_sync(REGISTRY_WAIT_SECONDS)
            tasks.append(asyncio.create_task(follower.run()))
            tasks.append(asyncio.create_task(drift.run()))
            tasks.append(asyncio.create_task(shadow.run()))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if follower is not None:
            follower.close()
        if servicer.drift is not None:
            servicer.drift.close()
        if servicer.shadow is not None:
            await servicer.shadow.close()
        await servicer.close()
        await clients.close()
        # The shadow store's database too; last, once the batcher's answers are logged.
        prediction_log.close()

    return ServiceApp(
        name="inference",
        register=lambda server: pb_grpc.add_InferenceServiceServicer_to_server(servicer, server),
        startup=startup,
        shutdown=shutdown,
    )
