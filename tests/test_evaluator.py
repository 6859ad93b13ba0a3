"""Incremental evaluation (sentiloop.evaluation.evaluator) with a real tiny model and the
real feedback store behind the page port: each (model, text) is predicted once, serve-time
predictions of the evaluated version are reused, only new feedback is read, and the latest
label per text wins."""

from __future__ import annotations

import asyncio
import tarfile
from pathlib import Path

import pytest
from test_train_script import run_train

from sentiloop.core.db import open_database
from sentiloop.core.objectstore import LocalObjectStore
from sentiloop.data.scoring import labelled
from sentiloop.data.vader import build_dataset
from sentiloop.evaluation.evaluator import EvaluationStore, Evaluator, FeedbackRecord, Models
from sentiloop.feedback.store import FeedbackStore, NewFeedback


class StorePages:
    """The feedback service's ListFeedback paging, over its real store."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store
        self.pages = 0

    async def page(self, after_id: int, size: int) -> tuple[list[FeedbackRecord], bool, int]:
        self.pages += 1
        records = self.store.list(after_id, size + 1)
        page = [
            FeedbackRecord(r.id, r.text, r.user_label, r.model_version, r.model_prediction)
            for r in records[:size]
        ]
        return page, len(records) > size, self.store.stats().total


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalObjectStore, str]:
    data = tmp_path_factory.mktemp("data")
    build_dataset(data, limit_per_split={"train": 64, "validation": 32, "test": 32})
    run = run_train(tmp_path_factory.mktemp("job"), data, {"preset": "tiny", "max_steps": 2})
    assert run.returncode == 0, run.stdout + run.stderr
    store = LocalObjectStore(tmp_path_factory.mktemp("objects"))
    archive = tmp_path_factory.mktemp("pack") / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(run.model_dir.iterdir()):
            tar.add(item, arcname=item.name)
    return store, store.put_file("models/job/output/model.tar.gz", archive)


def test_each_text_is_predicted_once_and_serve_time_predictions_are_reused(
    artifact: tuple[LocalObjectStore, str], tmp_path: Path, database_url: str
) -> None:
    store, path = artifact
    feedback = FeedbackStore(tmp_path / "feedback.db", max_text_length=5000)
    pages = StorePages(feedback)
    scores = EvaluationStore(open_database(database_url, Path("unused"), schema="evaluation"))
    evaluator = Evaluator(scores, Models(store, tmp_path / "models"), pages)
    for i in range(2500):  # three pages of 1,000
        feedback.submit(NewFeedback(text=f"text {i}", user_label="positive"))
    # Ten cite a prediction the evaluated version made when it served.
    for i in range(10):
        feedback.submit(
            NewFeedback(
                text=f"served {i}", user_label="negative", model_prediction="negative",
                model_version="v1",
            )
        )  # fmt: skip

    assert asyncio.run(evaluator.sync_feedback()) == 2510
    assert pages.pages == 3
    first = evaluator.score_feedback(path, "v1")
    assert first.metrics["total_samples"] == 2510
    assert first.predicted_now == 2500  # the ten served predictions were reused
    served = first.metrics["per_class"]["negative"]
    assert served["support"] == 10 and served["recall"] == 1.0  # what the model had said

    again = evaluator.score_feedback(path, "v1")
    assert again.predicted_now == 0 and again.metrics == first.metrics

    # New feedback: only it is read (one page) and predicted; a relabelled text counts once,
    # with its latest label.
    feedback.submit(NewFeedback(text="brand new", user_label="neutral"))
    feedback.submit(NewFeedback(text="text 0", user_label="negative"))
    pages.pages = 0
    assert asyncio.run(evaluator.sync_feedback()) == 2512
    assert pages.pages == 1
    third = evaluator.score_feedback(path, "v1")
    assert third.predicted_now == 1 and third.metrics["total_samples"] == 2511
    assert third.metrics["per_class"]["negative"]["support"] == 11

    # Under another version name, v1's served answers are not taken for its own: those ten
    # texts are predicted; the artifact's kept scores (the same weights) serve the rest.
    other = evaluator.score_feedback(path, "v2")
    assert other.predicted_now == 10
    test = labelled([("a test sentence", "positive"), ("text 5", "positive")])
    assert evaluator.score(path, test).predicted_now == 1  # kept scores serve test sets too
    assert evaluator.score(path, test).predicted_now == 0
    scores.close()
    feedback.close()
