"""Promotion by the gate on its own, end to end over the wire: feedback that carries a
learnable signal -> retraining (cross-fitted, tiny preset) -> the gate promotes -> the new
version serves and answers the new labels.

The tiny preset is a randomly initialised 2-layer model, so its score on the fixed test set
is noise: this mesh turns the test-set guards off (tolerance, class floor and ECE tolerance
of 100 points) and keeps the one that matters here, the out-of-fold feedback evidence. The
guards' own rejections are tested in test_gate.py, test_calibration.py and
test_feedback_loop.py."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sentiloop.testing import TINY_ENV, RunningMesh, start_mesh, wait_for

ENV = {
    **TINY_ENV,
    "SENTILOOP_GATE_TOLERANCE": "1",
    "SENTILOOP_GATE_CLASS_FLOOR": "1",
    "SENTILOOP_GATE_ECE_TOLERANCE": "1",
    "SENTILOOP_RETRAIN_LEARNING_RATE": "0.005",
}
# Made-up words that the tokenizer keeps as their own word pieces: a signal a 2-layer
# model learns in a few steps, and that the bootstrapped model cannot know.
SIGNAL = {"positive": "zorblax", "negative": "quintrel", "neutral": "plimfet"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(tmp_path_factory.mktemp("promotion"), extra_env=ENV)
    try:
        yield running
    finally:
        assert running.stop() == 0


def test_the_gate_promotes_a_candidate_that_learned_the_feedback(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=600) as client:
        client.post("/model-init/bootstrap?auto_deploy=true", json={})
        wait_for(lambda: client.get("/predict/status").json().get("model_version") == "v1", 120)
        fresh = [
            (f"{word} {word} unseen {i}", label)
            for i in range(10)
            for label, word in SIGNAL.items()
        ]

        def right(version: str) -> int:
            batch = client.post("/predict/batch", json={"texts": [t for t, _ in fresh]}).json()
            assert {p["model_version"] for p in batch["predictions"]} == {version}
            return sum(
                p["label"] == label
                for p, (_, label) in zip(batch["predictions"], fresh, strict=True)
            )

        before = right("v1")
        for i in range(30):
            for label, word in SIGNAL.items():
                sent = client.post(
                    "/feedback", json={"text": f"{word} {word} message {i}", "user_label": label}
                )
                assert sent.status_code == 200, sent.text
        result = client.post("/retrain", json={})
        assert result.status_code == 200, result.text
        outcome = result.json()
        assert outcome["promoted"] is True, outcome["gate"]
        gate = outcome["gate"]
        assert gate["decision"] == "promoted" and gate["feedback"]["folds"] == 3
        assert gate["feedback"]["samples"] == 90
        assert gate["feedback"]["delta_macro_f1_lower_bound"] > 0
        version = outcome["model_version"]
        wait_for(lambda: client.get("/predict/status").json().get("model_version") == version, 30)
        # It learned the signal: on texts neither model has seen, it is right far more
        # often than the model it replaced, which cannot know these words.
        after = right(version)
        print(f"\nunseen signal texts right: v1 {before}/30, {version} {after}/30")
        assert after >= before + 6, (before, after)
