"""Serving through a SageMaker endpoint: the same ``predict(texts)`` as the in-process
:class:`~sentiloop.inference.engine.Predictor` (same validation, same log of predictions),
answered by inference.py running in the endpoint (domain logic; no grpc here)."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from typing import Any

from sentiloop.aws.endpoint import EndpointView, SageMakerEndpoint
from sentiloop.aws.errors import AWSError, error_message
from sentiloop.core.errors import Unavailable
from sentiloop.core.serving import ServingState
from sentiloop.core.vocabulary import EndpointState, normalize_label
from sentiloop.inference.engine import Prediction, PredictionLog, check_texts

log = logging.getLogger("sentiloop.inference")

_SERVING = (EndpointState.IN_SERVICE, EndpointState.UPDATING, "SystemUpdating", "RollingBack")


def serving_state(view: EndpointView) -> ServingState:
    """The endpoint in the terms of the InferenceService's GetServingStatus."""
    if view.status == EndpointState.NOT_DEPLOYED:
        return ServingState(EndpointState.NOT_DEPLOYED)
    if view.status == EndpointState.CREATING:
        return ServingState(EndpointState.LOADING, "", view.model_version)
    if view.status in (EndpointState.UPDATING, "SystemUpdating", "RollingBack"):
        target = view.pending_version or view.model_version
        return ServingState(
            EndpointState.LOADING, view.model_version, target, loaded_at=view.last_modified
        )
    if view.status == EndpointState.IN_SERVICE:
        return ServingState(
            EndpointState.IN_SERVICE,
            view.model_version,
            view.model_version,
            view.failure_reason,
            loaded_at=view.last_modified,
        )
    reason = view.failure_reason or f"endpoint is {view.status}"
    return ServingState(EndpointState.FAILED, "", view.model_version, reason)


class SageMakerPredictor:
    """Predictions from the SageMaker endpoint, each logged with the version that made it:
    the one behind the production variant SageMaker says answered (one variant per
    version), else the version the endpoint serves.

    ``predict`` blocks (run it in a thread, as the servicer does); the endpoint's state is
    re-read at most every ``refresh_seconds`` (or on ``refresh()``)."""

    def __init__(
        self,
        runtime_client: Any,
        endpoint: SageMakerEndpoint,
        log: PredictionLog,
        max_text_length: int,
        refresh_seconds: float = 5.0,
    ) -> None:
        self._runtime = runtime_client
        self._endpoint = endpoint
        self._log = log
        self._max_text_length = max_text_length
        self._refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._view: EndpointView | None = None
        self._read_at = -math.inf
        self._variants: dict[str, str] = {}  # every variant seen -> its version
        self._unknown: set[str] = set()
        self.state = ServingState(EndpointState.NOT_DEPLOYED)

    def refresh(self) -> ServingState:
        """Re-reads the endpoint's state (blocking); on an AWS error the last one stays."""
        try:
            view = self._endpoint.describe()
        except AWSError as error:
            log.warning("describing endpoint %s failed: %s", self._endpoint.name, error)
            with self._lock:
                self._read_at = time.monotonic()  # not again on every request
            return self.state
        with self._lock:
            self._view = view
            self._read_at = time.monotonic()
            self._variants |= view.variants
            self.state = serving_state(view)
        return self.state

    def _current_view(self) -> EndpointView:
        if time.monotonic() - self._read_at >= self._refresh_seconds:
            self.refresh()
        view = self._view
        name = self._endpoint.name
        if view is None:
            raise Unavailable(f"the state of SageMaker endpoint {name} cannot be read")
        if view.status == EndpointState.NOT_DEPLOYED:
            raise Unavailable(
                f"no model is deployed yet (SageMaker endpoint {name} does not exist): bootstrap"
                " one with POST /model-init/bootstrap?auto_deploy=true"
            )
        if view.status == EndpointState.CREATING:
            raise Unavailable(f"SageMaker endpoint {name} is still being created")
        if view.status not in _SERVING:
            reason = f": {view.failure_reason}" if view.failure_reason else ""
            raise Unavailable(f"SageMaker endpoint {name} is {view.status}{reason}")
        return view

    def _version(self, view: EndpointView, variant: str) -> str:
        if variant and variant not in self._variants and variant not in self._unknown:
            self.refresh()  # a configuration we have not seen yet
            if variant not in self._variants:  # not ours: do not ask on every request
                self._unknown = {*list(self._unknown)[-99:], variant}
        return self._variants.get(variant) or view.model_version

    def _invoke(self, texts: list[str]) -> tuple[list[Any], str]:
        name = self._endpoint.name
        try:
            response = self._runtime.invoke_endpoint(
                EndpointName=name,
                ContentType="application/json",
                Accept="application/json",
                Body=json.dumps({"texts": texts}).encode(),
            )
            body = response["Body"].read()
        except AWSError as error:
            raise Unavailable(
                f"SageMaker endpoint {name} did not answer: {error_message(error)}"
            ) from error
        try:
            outputs = json.loads(body)["predictions"]
        except (ValueError, TypeError, KeyError) as error:
            raise Unavailable(f"SageMaker endpoint {name} answered no predictions") from error
        if not isinstance(outputs, list) or len(outputs) != len(texts):
            count = len(outputs) if isinstance(outputs, list) else "no list of"
            raise Unavailable(
                f"SageMaker endpoint {name} answered {count} predictions for {len(texts)} texts"
            )
        return outputs, str(response.get("InvokedProductionVariant") or "")

    def check(self, texts: list[str]) -> None:
        """The input rules, checked per caller before a request joins a batch."""
        check_texts(texts, self._max_text_length)

    def predict(self, texts: list[str]) -> list[Prediction]:
        check_texts(texts, self._max_text_length)
        view = self._current_view()
        outputs, variant = self._invoke(texts)
        version = self._version(view, variant)
        predictions = []
        for text, out in zip(texts, outputs, strict=True):
            try:
                label = normalize_label(str(out["label"]))
                if label is None:
                    raise ValueError(f"unknown label {out['label']!r}")
                prediction = Prediction(
                    id=uuid.uuid4().hex,
                    text=text,
                    label=label,
                    confidence=float(out["confidence"]),
                    scores={str(k).lower(): float(v) for k, v in out["scores"].items()},
                    model_version=version,
                )
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                raise Unavailable(
                    f"SageMaker endpoint {self._endpoint.name} answered a malformed"
                    f" prediction: {error}"
                ) from error
            predictions.append(prediction)
        self._log.record(predictions)
        return predictions
