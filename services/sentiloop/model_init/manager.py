"""ModelInit's domain logic: training jobs from start to deployment, with their state
streamed to watchers and kept across restarts. No grpc here: the registry and the
endpoint are reached through the small ports below."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sentiloop.core import metrics
from sentiloop.core.errors import FailedPrecondition, InvalidArgument, SentiloopError
from sentiloop.core.scripts import load_script
from sentiloop.core.training import EndpointStatus, TrainingEvent, TrainingJob
from sentiloop.core.validation import quoted
from sentiloop.core.vocabulary import EventType, JobStatus
from sentiloop.model_init.backends import TrainingBackend
from sentiloop.model_init.jobs import JobStore

log = logging.getLogger("sentiloop.model_init")

PRESETS = ("minilm", "tiny")


def check_preset(preset: str) -> str:
    if preset and preset not in PRESETS:
        raise InvalidArgument({"preset": f"{quoted(preset)} is not one of {', '.join(PRESETS)}"})
    return preset


@dataclass(frozen=True)
class Deployment:
    version: str
    model_name: str
    endpoint: EndpointStatus | None  # None when the version was only registered


class Notify(Protocol):
    async def __call__(
        self, type: str, subject: str, message: str, **attributes: Any
    ) -> object: ...


class RegistryPort(Protocol):
    async def register(self, job: TrainingJob, gate: dict[str, Any]) -> str: ...
    async def activate(self, version: str, reason: str) -> None: ...


class EndpointPort(Protocol):
    name: str
    # How long a deploy takes, in words (the original API's estimated_time).
    estimated_time: str

    def model_name(self, version: str, artifact: str) -> str: ...
    async def deploy(self, version: str, artifact: str) -> None: ...
    async def status(self) -> EndpointStatus: ...
    async def wait_in_service(self, version: str, timeout: float) -> EndpointStatus: ...


@dataclass(frozen=True)
class JobUpdate:
    job: TrainingJob
    message: str
    time: datetime
    done: bool


@dataclass(frozen=True)
class NewTraining:
    source: str
    channels: dict[str, str]
    dataset_hash: str
    hyperparameters: dict[str, str]
    preset: str
    auto_deploy: bool


class ModelInit:
    def __init__(
        self,
        jobs: JobStore,
        backend: TrainingBackend,
        registry: RegistryPort,
        endpoint: EndpointPort,
        notify: Notify | None = None,
        deploy_timeout: float = 300.0,
    ) -> None:
        self._notify_port = notify
        self._jobs = jobs
        self._backend = backend
        self._registry = registry
        self._endpoint = endpoint
        self._deploy_timeout = deploy_timeout
        self._watchers: dict[str, set[asyncio.Queue[JobUpdate]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._deploy_lock = asyncio.Lock()

    async def _notify(self, type: str, subject: str, message: str, **attributes: Any) -> None:
        if self._notify_port is not None:
            await self._notify_port(type, subject, message, **attributes)

    # ---- lifecycle

    async def recover(self) -> None:
        """Picks up what a restart interrupted: running jobs start again (training is
        seeded, so the rerun is the same job), pending auto-deploys happen."""
        for job in await asyncio.to_thread(self._jobs.unfinished):
            if job.status == JobStatus.STOPPING:
                job = replace(
                    job,
                    status=JobStatus.STOPPED,
                    secondary_status=JobStatus.STOPPED,
                    ended_at=datetime.now(UTC),
                )
                await self._update(job, "stopped (the service restarted while stopping it)")
            elif job.status == JobStatus.IN_PROGRESS:
                job = replace(
                    job,
                    attempts=job.attempts + 1,
                    secondary_status="Starting",
                    progress={},
                    metrics={},
                )
                await self._update(job, f"resumed after a restart (attempt {job.attempts})")
                self._spawn(self._run(job))
            else:
                self._spawn(self._auto_deploy(job))

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- training

    def check_hyperparameters(self, hyperparameters: dict[str, str]) -> None:
        """What train.py would reject, rejected now; and a base model the job could not
        load (blocking: the hub check may take seconds)."""
        try:
            resolved = load_script("train").resolve_hyperparameters({}, hyperparameters)
        except Exception as error:  # train.py's TrainingError: the message says what is wrong
            raise InvalidArgument({"hyperparameters": str(error)}) from None
        if "base_model" in hyperparameters:
            self._backend.check_base_model(str(resolved["base_model"]))

    async def start_training(self, new: NewTraining) -> TrainingJob:
        check_preset(new.preset)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        name = f"sentiloop-{new.source}-{stamp}-{secrets.token_hex(2)}"
        job = TrainingJob(
            name=name,
            status=JobStatus.IN_PROGRESS,
            secondary_status="Starting",
            backend=self._backend.name,
            created_at=datetime.now(UTC),
            auto_deploy=new.auto_deploy,
            preset=new.preset,
            source=new.source,
            dataset_hash=new.dataset_hash,
            channels=new.channels,
            hyperparameters=new.hyperparameters,
        )
        await asyncio.to_thread(self._jobs.create, job)
        log.info("training job %s started", name, extra={"fields": {"job": name}})
        await self._notify(
            EventType.TRAINING_STARTED, name, f"{new.source} training started", preset=new.preset
        )
        self._spawn(self._run(job))
        return job

    async def _run(self, job: TrainingJob) -> None:
        current = job

        async def on_event(event: TrainingEvent) -> None:
            nonlocal current
            current = await self._apply(current, event)

        try:
            await self._backend.run(job, on_event)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("training job %s broke", job.name)
            current = await self._apply(current, TrainingEvent("failed", reason=str(error)))
        if current.status == JobStatus.IN_PROGRESS:  # a backend that ended without a verdict
            current = await self._apply(
                current, TrainingEvent("failed", reason="the training backend gave no result")
            )
        ended = current.ended_at or datetime.now(UTC)
        metrics.observe_training(str(current.status), (ended - current.created_at).total_seconds())
        if current.status == JobStatus.COMPLETED:
            test = current.final_metrics.get("test", {})
            await self._notify(
                EventType.TRAINING_COMPLETED,
                current.name,
                "training completed",
                test_accuracy=test.get("accuracy"),
                test_macro_f1=test.get("macro_f1"),
            )
        else:
            await self._notify(
                EventType.TRAINING_FAILED,
                current.name,
                current.failure_reason,
                status=current.status,
            )
        if current.status == JobStatus.COMPLETED and current.auto_deploy:
            await self._auto_deploy(current)

    async def _apply(self, job: TrainingJob, event: TrainingEvent) -> TrainingJob:
        if event.kind == "status":
            job = replace(job, secondary_status=event.status)
            message = f"status: {event.status}"
        elif event.kind == "progress":
            job = replace(job, progress=event.progress, secondary_status="Training")
            p = event.progress
            message = (
                f"step {int(p['step'])}/{int(p['total_steps'])}, epoch {p['epoch']:.2f},"
                f" loss {p['loss']:.4f}"
            )
        elif event.kind == "metric":
            job = replace(job, metrics={**job.metrics, event.name: event.value})
            message = f"{event.name} = {event.value:.4f}"
        elif event.kind == "completed":
            job = replace(
                job,
                status=JobStatus.COMPLETED,
                secondary_status="Completed",
                artifact=event.artifact,
                final_metrics=event.metrics,
                ended_at=datetime.now(UTC),
            )
            message = "training completed"
        else:
            status = JobStatus.STOPPED if event.status == "Stopped" else JobStatus.FAILED
            job = replace(
                job,
                status=status,
                secondary_status=status,
                failure_reason=event.reason,
                ended_at=datetime.now(UTC),
            )
            message = f"training {status.lower()}: {event.reason}"
        await self._update(job, message)
        return job

    async def _update(self, job: TrainingJob, message: str) -> None:
        await asyncio.to_thread(self._jobs.save, job)
        update = JobUpdate(job=job, message=message, time=datetime.now(UTC), done=job.done)
        for queue in self._watchers.get(job.name, ()):
            queue.put_nowait(update)

    async def stop(self, job_name: str) -> TrainingJob:
        job = await asyncio.to_thread(self._jobs.get, job_name)
        if job.done:
            raise FailedPrecondition(f"training job {job_name!r} has already ended ({job.status})")
        await self._update(replace(job, status=JobStatus.STOPPING), "stop requested")
        await self._backend.stop(job_name)
        return await asyncio.to_thread(self._jobs.get, job_name)

    # ---- reading

    async def get(self, job_name: str) -> TrainingJob:
        return await asyncio.to_thread(self._jobs.get, job_name)

    async def recent(self, limit: int) -> list[TrainingJob]:
        return await asyncio.to_thread(self._jobs.recent, limit)

    async def watch(self, job_name: str) -> AsyncIterator[JobUpdate]:
        """The current state first, then every update, ending with the one marked done."""
        queue: asyncio.Queue[JobUpdate] = asyncio.Queue()
        watchers = self._watchers.setdefault(job_name, set())
        watchers.add(queue)
        try:
            job = await asyncio.to_thread(self._jobs.get, job_name)
            yield JobUpdate(job, f"status: {job.status}", datetime.now(UTC), job.done)
            while not job.done:
                update = await queue.get()
                job = update.job
                yield update
        finally:
            watchers.discard(queue)
            if not watchers:
                self._watchers.pop(job_name, None)

    # ---- deployment

    async def deploy(
        self, job_name: str, gate: dict[str, Any] | None = None, register_only: bool = False
    ) -> Deployment:
        """Registers the job's model as a version (once), then unless ``register_only``
        activates it and waits until the endpoint serves it."""
        job = await asyncio.to_thread(self._jobs.get, job_name)
        if job.status != JobStatus.COMPLETED:
            raise FailedPrecondition(
                f"training job {job_name!r} is {job.status}; only a Completed job can be deployed"
            )
        async with self._deploy_lock:
            job = await asyncio.to_thread(self._jobs.get, job_name)
            version = job.deployed_version or await self._registry.register(job, gate or {})
            if not job.deployed_version:
                job = replace(job, deployed_version=version)
                await self._update(job, f"registered as model version {version}")
                await self._notify(EventType.MODEL_REGISTERED, version, f"training job {job_name}")
            model_name = self._endpoint.model_name(version, job.artifact)
            if register_only:
                return Deployment(version, model_name, None)
            await self._registry.activate(version, f"deploy of training job {job_name}")
            await self._endpoint.deploy(version, job.artifact)
        status = await self._endpoint.wait_in_service(version, self._deploy_timeout)
        await self._update(job, f"deployed as {version}: endpoint {status.status}")
        await self._notify(
            EventType.MODEL_DEPLOYED, version, f"endpoint {status.status}", job_name=job_name
        )
        return Deployment(version, model_name, status)

    async def _auto_deploy(self, job: TrainingJob) -> None:
        delay = 1.0
        while True:
            try:
                await self.deploy(job.name)
                return
            except SentiloopError as error:
                log.warning("auto-deploy of %s failed (%s); retrying", job.name, error.message)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def endpoint_status(self) -> EndpointStatus:
        return await self._endpoint.status()

    @property
    def endpoint_name(self) -> str:
        return self._endpoint.name

    @property
    def deploy_time(self) -> str:
        return self._endpoint.estimated_time

    def training_time(self, preset: str) -> str:
        return self._backend.estimated_time(preset)
