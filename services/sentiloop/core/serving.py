"""What InferenceService serves, as it announces it: the ``serving.changed`` event's
attributes. The registry keeps the latest announcement and answers a version's endpoint
status from it, instead of asking the serving side on every read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sentiloop.core.vocabulary import EndpointState


@dataclass(frozen=True)
class ServingState:
    status: str  # NotDeployed | Loading | InService | Failed
    model_version: str = ""  # the version answering now
    target_version: str = ""  # the version being loaded, or that failed to load
    failure_reason: str = ""
    loaded_at: datetime | None = None
    # How model_version answers: "onnxruntime" or "torch", and "fp32", "int8", ... ("" when
    # not known, as behind a SageMaker endpoint).
    engine: str = ""
    precision: str = ""

    @property
    def subject(self) -> str:
        return self.target_version or self.model_version

    def describe(self) -> str:
        if self.status == EndpointState.LOADING:
            return f"loading {self.target_version} (serving {self.model_version or 'nothing'})"
        if self.status == EndpointState.FAILED:
            return f"{self.target_version} failed to load: {self.failure_reason}"
        served_with = f" ({self.engine} {self.precision})" if self.engine else ""
        return f"{self.status} {self.model_version}{served_with}".strip()

    def as_attributes(self) -> dict[str, str]:
        return {
            "status": self.status,
            "model_version": self.model_version,
            "target_version": self.target_version,
            "failure_reason": self.failure_reason,
            "engine": self.engine,
            "precision": self.precision,
        }

    @classmethod
    def from_attributes(cls, attributes: dict[str, Any]) -> ServingState:
        return cls(
            status=str(attributes.get("status", "")),
            model_version=str(attributes.get("model_version", "")),
            target_version=str(attributes.get("target_version", "")),
            failure_reason=str(attributes.get("failure_reason", "")),
            engine=str(attributes.get("engine", "")),
            precision=str(attributes.get("precision", "")),
        )

    def endpoint_status_of(self, version: str) -> str:
        """The endpoint status to show for ``version`` (the registry's active one)."""
        if self.model_version == version and self.status == EndpointState.IN_SERVICE:
            return EndpointState.IN_SERVICE
        if self.target_version == version and self.status == EndpointState.FAILED:
            return EndpointState.FAILED
        # Loading it, or not yet told to: either way the endpoint is on its way to it.
        return EndpointState.UPDATING if self.model_version else EndpointState.CREATING
