"""Feedback that cites a prediction: its text, model version and predicted label come
from the prediction log rather than from the client."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from sentiloop.core.errors import InvalidArgument
from sentiloop.core.vocabulary import normalize_label
from sentiloop.feedback.store import NewFeedback


@dataclass(frozen=True)
class LoggedPrediction:
    text: str
    label: str
    model_version: str


class PredictionLookup(Protocol):
    async def get(self, prediction_id: str) -> LoggedPrediction:
        """Raises NotFound for an unknown id."""
        ...


async def resolve(new: NewFeedback, lookup: PredictionLookup) -> NewFeedback:
    if not new.prediction_id.strip():
        return new
    logged = await lookup.get(new.prediction_id.strip())
    if new.text and new.text != logged.text:
        raise InvalidArgument(
            {"text": "differs from the text of the cited prediction; send one or the other"}
        )
    if new.model_prediction and normalize_label(new.model_prediction) != logged.label:
        raise InvalidArgument({"model_prediction": f"the cited prediction was {logged.label!r}"})
    return replace(
        new,
        text=logged.text,
        model_prediction=logged.label,
        model_version=logged.model_version,
    )
