"""The project's words, each defined once: labels, training-job and endpoint statuses, event
types. StrEnums, so they are the very strings the JSON API, the databases and the events
carry, and a typo is a NameError instead of a silent mismatch."""

from __future__ import annotations

from enum import StrEnum


class Label(StrEnum):
    NEGATIVE = "negative"
    NEUTRAL = "neutral"
    POSITIVE = "positive"


LABELS: tuple[str, ...] = tuple(Label)
"""The label order used everywhere (model outputs, confusion matrices, score maps)."""


def normalize_label(value: str) -> Label | None:
    """The label ``value`` names (any case, surrounding spaces ignored), or None. Every
    label from outside (API requests, files, feedback exports) goes through here."""
    try:
        return Label(value.strip().lower())
    except ValueError:
        return None


class JobStatus(StrEnum):
    """A training job's status, in SageMaker's words."""

    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPING = "Stopping"
    STOPPED = "Stopped"


class EndpointState(StrEnum):
    """What the endpoint is doing (SageMaker's words, plus NotDeployed and Unknown)."""

    NOT_DEPLOYED = "NotDeployed"
    CREATING = "Creating"
    UPDATING = "Updating"
    IN_SERVICE = "InService"
    FAILED = "Failed"
    UNKNOWN = "Unknown"
    # InferenceService's own word while it loads a version beside the served one.
    LOADING = "Loading"


class EventType(StrEnum):
    """The events the loop emits (NotificationService accepts other dotted types too)."""

    TRAINING_STARTED = "training.started"
    TRAINING_COMPLETED = "training.completed"
    TRAINING_FAILED = "training.failed"
    MODEL_REGISTERED = "model.registered"
    MODEL_PROMOTED = "model.promoted"
    MODEL_REJECTED = "model.rejected"
    MODEL_DEPLOYED = "model.deployed"
    MODEL_ROLLED_BACK = "model.rolled_back"
    # The registry's active version changed (an activation or a rollback): what
    # InferenceService follows to load the new version.
    MODEL_ACTIVATED = "model.activated"
    # An activated version failed to load: the registry went back to the version that
    # answers (model.activated, kind "reverted") and says why here.
    MODEL_ACTIVATION_FAILED = "model.activation_failed"
    # What InferenceService serves changed (loading, serving, failed to load): the
    # registry keeps the latest and answers endpoint statuses from it.
    SERVING_CHANGED = "serving.changed"
    RETRAINING_TRIGGERED = "retraining.triggered"
    # A candidate version started, or stopped, scoring live traffic beside the served
    # model (InferenceService's shadow evaluation; GET /predict/shadow reports it).
    SHADOW_STARTED = "shadow.started"
    SHADOW_ENDED = "shadow.ended"
    # The drift score of the served version's recent inputs reached the threshold
    # (GET /predict/drift); published once per crossing, and model.drift_cleared when it
    # falls back under it.
    MODEL_DRIFT_DETECTED = "model.drift_detected"
    MODEL_DRIFT_CLEARED = "model.drift_cleared"
