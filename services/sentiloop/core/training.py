"""What a training job is, what a training backend reports, and what an endpoint is doing:
the value types ModelInit shares with the backends that run jobs and serve models (local
ones in model_init, AWS ones in sentiloop.aws)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sentiloop.core.vocabulary import JobStatus

TERMINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED)


@dataclass(frozen=True)
class TrainingJob:
    name: str
    status: str
    backend: str
    created_at: datetime
    secondary_status: str = ""
    ended_at: datetime | None = None
    artifact: str = ""
    failure_reason: str = ""
    progress: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # metrics.json as train.py wrote it, once the job has completed
    final_metrics: dict[str, Any] = field(default_factory=dict)
    auto_deploy: bool = False
    deployed_version: str = ""
    preset: str = ""
    source: str = "bootstrap"
    dataset_hash: str = ""
    channels: dict[str, str] = field(default_factory=dict)
    hyperparameters: dict[str, str] = field(default_factory=dict)
    attempts: int = 1

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class TrainingEvent:
    """What a backend reports while a job runs; ``completed`` or ``failed`` comes last."""

    kind: str  # status | progress | metric | completed | failed
    status: str = ""
    progress: dict[str, float] = field(default_factory=dict)
    name: str = ""
    value: float = 0.0
    artifact: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


Report = Callable[[TrainingEvent], Awaitable[None]]


def artifact_key(job_name: str) -> str:
    """SageMaker's layout: <output path>/<job name>/output/model.tar.gz."""
    return f"models/{job_name}/output/model.tar.gz"


def looks_like_hub_id(value: str) -> bool:
    """``org/name`` or ``name``, as the Hugging Face hub spells model ids."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?", value) is not None


@dataclass(frozen=True)
class EndpointStatus:
    status: str  # NotDeployed | Creating | Updating | InService | Failed | Unknown
    model_version: str = ""
    failure_reason: str = ""
    # When the endpoint was created and last switched versions: reported, not compared.
    created_at: datetime | None = field(default=None, compare=False)
    modified_at: datetime | None = field(default=None, compare=False)
