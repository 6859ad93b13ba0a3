"""Shadow evaluation: a candidate scores the requests the served model answered, off the
answer path. Its predictions never change or slow the answers and are recorded for both
models; the report compares them (agreement, and accuracy on labelled traffic); the
registry keeps the report with the version, and the promotion gate's shadow rule refuses a
candidate that was less accurate on enough labelled live traffic.

Pure parts are tested alone (the queue with a deliberately slow candidate, the report's
arithmetic, the gate); the whole path on the real mesh through Envoy."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sentiloop.core.config import load_settings
from sentiloop.core.db import Database, open_database
from sentiloop.core.errors import FailedPrecondition
from sentiloop.data import vader
from sentiloop.data.scoring import compare
from sentiloop.data.shadow import (
    ShadowReport,
    ShadowRule,
    macro_f1,
    score_labelled,
    shadow_problem,
    supersedes,
)
from sentiloop.inference.engine import Prediction, PredictionLog
from sentiloop.inference.shadow import (
    FeedbackLabel,
    ShadowAnswer,
    ShadowRun,
    ShadowRunner,
    ShadowStore,
)
from sentiloop.registry.service import Registry
from sentiloop.registry.store import ModelRegistry, NewModel
from sentiloop.retraining.gate import decide
from sentiloop.retraining.servicer import load_policy
from sentiloop.testing import (
    REVIEWS,
    TINY_ENV,
    RunningMesh,
    metric_sum,
    scrape,
    start_mesh,
    wait_for,
)

GATE = load_policy(load_settings({})).gate
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def predictions(count: int, label: str = "positive", version: str = "v1") -> list[Prediction]:
    return [
        Prediction(
            id=f"p{i}",
            text=f"text {i}",
            label=label,
            confidence=0.9,
            scores={"negative": 0.05, "neutral": 0.05, "positive": 0.9},
            model_version=version,
        )
        for i in range(count)
    ]


class SlowCandidate:
    """A candidate model that takes as long as the test wants: each call blocks until the
    test releases it (a real function that waits, standing in for a slow forward pass)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.entered = threading.Event()
        self.release = threading.Event()
        self.busy = False
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> Sequence[Mapping[str, Any]]:
        self.busy = True
        self.calls.append(texts)
        self.entered.set()
        try:
            if not self.release.wait(timeout=60):
                raise TimeoutError("the test never released the candidate")
            scores = {"negative": 0.8, "neutral": 0.1, "positive": 0.1}
            return [{"label": self.label, "confidence": 0.8, "scores": scores} for _ in texts]
        finally:
            self.busy = False


def open_predictions_database(database_url: str, tmp_path: Path) -> Database:
    """InferenceService's predictions database (SQLite or PostgreSQL), as create_app opens
    it: one for the prediction log and the shadow tables."""
    return open_database(database_url, tmp_path / "unused.db", schema="inference", durable=False)


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[tuple[ShadowStore, PredictionLog]]:
    """The shadow tables and the prediction log, in one database as InferenceService has
    them, on each engine."""
    database = open_predictions_database(database_url, tmp_path)
    log = PredictionLog(database)
    shadow = ShadowStore(database)
    yield shadow, log
    database.close()


def test_the_answer_path_never_waits_for_a_slow_candidate_and_overflow_is_skipped(
    store: tuple[ShadowStore, PredictionLog],
) -> None:
    shadows, log = store
    answered = predictions(10)
    log.record(answered)
    run = shadows.begin("v2", "models/v2/model.tar.gz", NOW, NOW + timedelta(hours=1))
    candidate = SlowCandidate("negative")
    runner = ShadowRunner(shadows.record, max_queue=4, max_batch=2)
    runner.start(run, "v2", candidate)
    try:
        runner.offer(answered[:1])
        assert candidate.entered.wait(10)  # the candidate thread holds p0 and blocks
        for prediction in answered[1:]:
            runner.offer([prediction])  # each returns at once: nothing here waits for it
        # Every offer came back while the candidate was still inside its first call:
        # had the answer path waited for the candidate, it could not have.
        assert candidate.busy and not candidate.release.is_set()
        assert candidate.calls == [["text 0"]]
        # p1..p4 fill the queue of 4; p5..p9 found it full and were skipped, counted.
        assert runner.take_skipped() == {run: 5}
        assert runner.take_skipped() == {}
        candidate.release.set()
        assert runner.wait_idle(30)
    finally:
        candidate.release.set()
        runner.close()
    assert candidate.calls == [["text 0"], ["text 1", "text 2"], ["text 3", "text 4"]]
    tally = shadows.tally(run)
    assert (tally.shadowed, tally.agreed, tally.served_versions) == (5, 0, ("v1",))
    rows = shadows.database.run(
        lambda tx: tx.fetch(
            "SELECT prediction_id, shadow_version, label, confidence, run_id"
            " FROM shadow_predictions ORDER BY prediction_id"
        )
    )
    assert [tuple(row.values()) for row in rows] == [
        (f"p{i}", "v2", "negative", 0.8, run) for i in range(5)
    ]


def test_a_candidate_that_fails_skips_its_batch_and_goes_on(
    store: tuple[ShadowStore, PredictionLog],
) -> None:
    shadows, log = store
    answered = predictions(3)
    log.record(answered)
    run = shadows.begin("v2", "a", NOW, NOW + timedelta(hours=1))
    seen: list[list[str]] = []

    def flaky(texts: list[str]) -> list[dict[str, Any]]:
        seen.append(texts)
        if texts == ["text 1"]:
            raise RuntimeError("a bad batch")
        return [{"label": "positive", "confidence": 1.0, "scores": {"positive": 1.0}}]

    runner = ShadowRunner(shadows.record, max_queue=10, max_batch=1)
    runner.start(run, "v2", flaky)
    for prediction in answered:
        runner.offer([prediction])
        assert runner.wait_idle(10)
    runner.close()
    assert seen == [["text 0"], ["text 1"], ["text 2"]]
    assert runner.take_skipped() == {run: 1}
    assert (shadows.tally(run).shadowed, shadows.tally(run).agreed) == (2, 2)


def test_nothing_is_offered_without_a_running_shadow_or_after_it_stops(
    store: tuple[ShadowStore, PredictionLog],
) -> None:
    shadows, _ = store
    calls: list[list[str]] = []
    runner = ShadowRunner(shadows.record, max_queue=10)
    runner.offer(predictions(2))  # no shadow yet
    run = shadows.begin("v2", "a", NOW, NOW + timedelta(hours=1))
    runner.start(run, "v2", lambda texts: calls.append(texts) or [])
    runner.stop()
    runner.offer(predictions(2))
    # Predictions the candidate's own version answered are not compared with themselves.
    runner.start(run, "v2", lambda texts: calls.append(texts) or [])
    runner.offer(predictions(2, version="v2"))
    assert runner.wait_idle(10)
    runner.close()
    assert calls == [] and runner.take_skipped() == {}


def test_one_run_at_a_time_and_labels_join_both_answers(
    store: tuple[ShadowStore, PredictionLog],
) -> None:
    shadows, log = store
    run = shadows.begin("v2", "a", NOW, NOW + timedelta(hours=1))
    with pytest.raises(FailedPrecondition, match="v2 is shadowing"):
        shadows.begin("v3", "b", NOW + timedelta(minutes=1), NOW + timedelta(hours=2))
    served = [
        replace(p, label=label)
        for p, label in zip(
            predictions(4), ["positive", "negative", "neutral", "positive"], strict=True
        )
    ]
    log.record(served)
    shadow_labels = ["positive", "positive", "neutral", "negative"]
    shadows.record(
        run, "v2", [shadow_answer(p.id, lab) for p, lab in zip(served, shadow_labels, strict=True)]
    )
    # p0 labelled twice: the later record wins, whatever order the pages come in.
    shadows.add_labels([FeedbackLabel(7, "p0", "negative")], "", 7)
    shadows.add_labels(
        [FeedbackLabel(3, "p0", "positive"), FeedbackLabel(8, "p1", "positive")], "", 8
    )
    shadows.add_labels([FeedbackLabel(9, "elsewhere", "neutral")], "t9", 9)
    assert shadows.cursor() == ("t9", 9)
    tally = shadows.tally(run)
    assert (tally.shadowed, tally.agreed) == (4, 2)
    assert sorted(tally.labelled) == [
        ("positive", "negative", "positive"),
        ("positive", "positive", "negative"),
    ]
    scores = score_labelled(tally.labelled)
    assert (scores.labelled, scores.shadow_accuracy, scores.served_accuracy) == (2, 0.5, 0.0)
    # An ended run frees the slot; it ends once.
    assert shadows.end(run, "stopped", NOW) and not shadows.end(run, "again", NOW)
    assert shadows.begin("v3", "b", NOW, NOW + timedelta(hours=1)) == run + 1


def test_replicas_asked_at_once_begin_one_run_and_read_it_back_alike(
    database_url: str, tmp_path: Path
) -> None:
    """Replicas on one database (their own connections or pools): asked to start a
    shadow at once, one begins it (SQLite's write lock, PostgreSQL's advisory lock decide),
    and every replica reads the same run back, times aware and in UTC."""
    databases = [open_predictions_database(database_url, tmp_path) for _ in range(4)]
    try:
        replicas = [ShadowStore(database) for database in databases]
        start = threading.Barrier(len(replicas))

        def begin(replica: ShadowStore) -> int | str:
            start.wait()
            try:
                return replica.begin("v2", "a", NOW, NOW + timedelta(hours=1))
            except FailedPrecondition as refused:
                return str(refused)

        with ThreadPoolExecutor(len(replicas)) as pool:
            answers = list(pool.map(begin, replicas))
        runs = [answer for answer in answers if isinstance(answer, int)]
        assert len(runs) == 1, answers
        later = (NOW + timedelta(hours=1)).isoformat()
        assert answers.count(f"v2 is shadowing until {later}: stop it first"
                             " (POST /predict/shadow/stop)") == len(replicas) - 1  # fmt: skip
        replicas[1].add_skipped(runs[0], 3)
        replicas[2].add_skipped(runs[0], 4)
        assert replicas[3].end(runs[0], "stopped", NOW + timedelta(minutes=5))
        assert not replicas[0].end(runs[0], "stopped", NOW + timedelta(minutes=6))
        expected = ShadowRun(
            id=runs[0],
            version="v2",
            artifact="a",
            started_at=NOW,
            ends_at=NOW + timedelta(hours=1),
            ended_at=NOW + timedelta(minutes=5),
            end_reason="stopped",
            skipped=7,
        )
        read = [replica.latest() for replica in replicas]
        assert read == [expected] * len(replicas)
        times = [(r.started_at, r.ends_at, r.ended_at) for r in read if r is not None]
        assert all(t is not None and t.utcoffset() == timedelta(0) for ts in times for t in ts)
        # The feedback cursor never goes back, whichever replica copied a page last.
        replicas[0].add_labels([FeedbackLabel(12, "p1", "negative")], "t12", 12)
        replicas[1].add_labels([FeedbackLabel(11, "p1", "positive")], "t11", 11)
        assert [replica.cursor() for replica in replicas] == [("t12", 12)] * len(replicas)
    finally:
        for database in databases:
            database.close()


def shadow_answer(prediction_id: str, label: str) -> ShadowAnswer:
    return ShadowAnswer(prediction_id, label, 0.7, {label: 0.7})


def test_report_arithmetic() -> None:
    assert macro_f1(["positive", "negative"], ["positive", "negative"]) == pytest.approx(2 / 3)
    assert macro_f1(["positive"] * 4, ["negative"] * 4) == 0.0
    scores = score_labelled(
        [
            ("positive", "positive", "positive"),
            ("negative", "positive", "negative"),
            ("neutral", "neutral", "positive"),
            ("negative", "positive", "negative"),
        ]
    )
    assert (scores.labelled, scores.shadow_accuracy, scores.served_accuracy) == (4, 0.75, 0.25)
    assert scores.shadow_macro_f1 > scores.served_macro_f1
    assert score_labelled([]).labelled == 0
    report = ShadowReport(
        state="ended",
        shadow_version="v2",
        served_versions=("v1",),
        started_at=NOW,
        labelled=4,
        agreement=0.5,
        computed_at=NOW,
    )
    assert ShadowReport.from_dict(report.as_dict()) == report
    # The proto's JSON form (int32 as numbers, "Z" timestamps) reads back the same.
    proto_json = {**report.as_dict(), "started_at": "2026-01-01T00:00:00Z"}
    assert ShadowReport.from_dict(proto_json) == report
    later = replace(report, computed_at=NOW + timedelta(seconds=1))
    assert supersedes(later, report) and not supersedes(report, later)
    assert supersedes(replace(report, started_at=NOW + timedelta(days=1), computed_at=NOW), later)


def worse_by(points: float, labelled: int) -> ShadowReport:
    return ShadowReport(
        state="ended",
        shadow_version="v2",
        labelled=labelled,
        shadow_accuracy=0.80 - points,
        served_accuracy=0.80,
    )


def test_the_gate_refuses_a_candidate_less_accurate_on_labelled_shadowed_traffic() -> None:
    truth = [i % 3 for i in range(300)]
    feedback_truth = [i % 3 for i in range(90)]
    test = compare("test", truth, truth, truth)
    # A candidate that is better on the feedback: promoted without shadow evidence ...
    feedback = compare(
        "feedback", feedback_truth, feedback_truth, [0] * len(feedback_truth), folds=3
    )
    rules = replace(GATE, shadow_min_labelled=30)
    assert decide(test, feedback, "v1", rules).decision == "promoted"
    # ... and with evidence within the tolerance, or on too few labels to say.
    within = decide(test, feedback, "v1", rules, shadow=worse_by(0.01, 40))
    assert within.decision == "promoted"
    assert within.as_dict()["shadow"]["labelled"] == 40
    assert within.as_dict()["shadow_min_labelled"] == 30
    assert decide(test, feedback, "v1", rules, shadow=worse_by(0.30, 29)).promoted
    # Less accurate by more than the tolerance on enough labels: refused, and said why.
    refused = decide(test, feedback, "v1", rules, shadow=worse_by(0.05, 30))
    assert refused.decision == "rejected"
    assert "5.0 points less accurate than the served model on 30 labelled" in refused.reason
    forced = decide(test, feedback, "v1", rules, force=True, shadow=worse_by(0.05, 30))
    assert forced.decision == "forced" and "less accurate" in forced.reason
    assert "shadow" not in decide(test, feedback, "v1", rules).as_dict()
    # The rule alone, as the registry applies it.
    assert shadow_problem(worse_by(0.05, 30), 0.01, 30) is not None
    assert shadow_problem(worse_by(-0.2, 300), 0.01, 30) is None  # better: never refused


def test_activating_a_version_whose_shadow_was_worse_needs_force(
    tmp_path: Path, database_url: str
) -> None:
    events: list[tuple[str, str, dict[str, Any]]] = []

    async def notify(type: str, subject: str, message: str, **attributes: Any) -> None:
        events.append((type, subject, attributes))

    async def scenario() -> None:
        database = open_database(database_url, tmp_path / "unused.db", schema="registry")
        store = ModelRegistry(database)
        registry = Registry(store, notify, lambda path: None, shadow_rule=ShadowRule(0.01, 30))
        for _ in range(2):
            await registry.register(NewModel(path="models/x/model.tar.gz", source="manual"))
        await registry.activate("v1", "")
        await registry.record_shadow("v2", worse_by(0.10, 40))
        # An older report (a slower replica's) does not replace a newer one.
        newer = replace(worse_by(0.10, 40), computed_at=NOW + timedelta(seconds=5))
        await registry.record_shadow("v2", newer)
        await registry.record_shadow("v2", replace(worse_by(0.0, 41), computed_at=NOW))
        kept = await registry.get("v2")
        assert kept.shadow["labelled"] == 40
        assert kept.shadow["shadow_accuracy"] == pytest.approx(0.7)
        with pytest.raises(FailedPrecondition, match="less accurate than the served model"):
            await registry.activate("v2", "looks fine")
        assert (await registry.get("v1")).is_active
        model, previous = await registry.activate("v2", "looks fine", force=True)
        assert model.is_active and previous == "v1"
        [last, *_] = await registry.activations()
        assert last.kind == "forced"
        assert last.reason.startswith("looks fine; forced despite: shadowing live traffic")
        assert events[-1][2]["kind"] == "forced"
        # A version whose shadow was as good activates as before.
        await registry.record_shadow(
            "v1", replace(worse_by(0.0, 50), computed_at=NOW + timedelta(days=1))
        )
        assert (await registry.activate("v1", ""))[0].is_active
        store.close()

    asyncio.run(scenario())


# ---- the whole path on the real mesh


MIN_LABELLED = 4


def lopsided_csv(label: str, rows: int = 230) -> str:
    """Tweets labelled ``label`` but for a few of each other label (an import needs some of
    every label): a tiny model trained on them answers ``label`` to everything, so the
    two versions of this test disagree by construction."""
    others = [other for other in ("positive", "negative", "neutral") if other != label]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label"])
    for i, (_group, text, _label) in enumerate(vader.load_domain("tweets")[:rows]):
        writer.writerow([text, others[i % 2] if i < 24 else label])
    return out.getvalue()


@pytest.fixture(scope="module")
def shadow_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(
        tmp_path_factory.mktemp("shadow"),
        extra_env={
            **TINY_ENV,
            "SENTILOOP_SHADOW_REPORT_SECONDS": "0.5",
            "SENTILOOP_GATE_SHADOW_MIN_LABELLED": str(MIN_LABELLED),
        },
    )
    try:
        yield running
    finally:
        assert running.stop() == 0


def bootstrap_on(client: httpx.Client, name: str, content: str, deploy: bool) -> str:
    dataset = client.post("/datasets", json={"name": name, "train": {"content": content}})
    assert dataset.status_code == 200, dataset.text
    started = client.post(
        f"/model-init/bootstrap?auto_deploy={str(deploy).lower()}",
        json={"dataset": dataset.json()["dataset"]["dataset_id"]},
    )
    assert started.status_code == 200, started.text
    job = started.json()["job_name"]
    wait_for(
        lambda: client.get(f"/model-init/status/{job}").json().get("status") == "Completed", 300
    )
    return str(job)


def shadow_report(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/predict/shadow")
    assert response.status_code == 200, response.text
    return response.json()["report"]  # type: ignore[no-any-return]


def test_a_candidate_shadows_live_traffic_through_envoy(shadow_mesh: RunningMesh) -> None:
    client = httpx.Client(
        base_url=shadow_mesh.url, headers=shadow_mesh.operator_headers, timeout=120
    )
    public = httpx.Client(base_url=shadow_mesh.url, timeout=60)
    assert shadow_report(public)["state"] == "none"
    bootstrap_on(client, "mostly-positive", lopsided_csv("positive"), deploy=True)
    wait_for(lambda: client.get("/model-init/endpoint-status").json()["status"] == "InService", 120)
    candidate_job = bootstrap_on(client, "mostly-negative", lopsided_csv("negative"), deploy=False)
    registered = client.post(f"/model-init/deploy/{candidate_job}", json={"register_only": True})
    assert registered.status_code == 200 and registered.json()["model_version"] == "v2"
    assert client.get("/models/v2").json()["model"]["status"] == "registered"

    texts = [f"{text} (shadow {i})" for i in range(2) for text, _ in REVIEWS]
    before = [public.post("/predict", json={"text": text}).json() for text in texts]

    # Only an operator starts a shadow; only a candidate can be one; one at a time.
    asked = {"version": "v2", "duration_seconds": 600}
    assert public.post("/predict/shadow", json=asked).status_code == 401
    refused = client.post("/predict/shadow", json={"version": "v1", "duration_seconds": 600})
    assert refused.status_code == 400 and "active version" in refused.json()["error"]
    unknown = client.post("/predict/shadow", json={"version": "v9", "duration_seconds": 60})
    assert unknown.status_code == 404, unknown.text
    assert client.post("/predict/shadow", json={"version": "v2"}).status_code == 400
    started = client.post("/predict/shadow", json=asked)
    assert started.status_code == 200, started.text
    assert started.json()["report"]["state"] in ("loading", "running")
    again = client.post("/predict/shadow", json=asked)
    assert again.status_code == 400 and "stop it first" in again.json()["error"]
    wait_for(lambda: shadow_report(public)["state"] == "running", 120)

    # The same texts while v2 shadows: the very same answers, from the served version.
    during = [public.post("/predict", json={"text": text}).json() for text in texts]
    for old, new in zip(before, during, strict=True):
        assert new["model_version"] == "v1"
        assert (new["label"], new["confidence"], new["scores"]) == (
            old["label"],
            old["confidence"],
            old["scores"],
        )
        assert new["prediction_id"] != old["prediction_id"]
    report = wait_for(lambda: (r := shadow_report(public))["shadowed"] >= len(texts) and r, 60)
    assert report["shadowed"] == len(texts) and report["skipped"] == 0
    assert report["shadow_version"] == "v2" and report["served_versions"] == ["v1"]

    # Both answers are recorded, for exactly the predictions made during the shadow.
    database = shadow_mesh.data_dir / "inference" / "predictions.db"
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT s.prediction_id, s.shadow_version, s.label, p.label, p.model_version"
            " FROM shadow_predictions s JOIN predictions p ON p.id = s.prediction_id"
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(p["prediction_id"] for p in during)
    assert {(r[1], r[2], r[4]) for r in rows} == {("v2", "negative", "v1")}
    served = {r[0]: r[3] for r in rows}
    shadow = {r[0]: r[2] for r in rows}
    assert served == {p["prediction_id"]: p["label"] for p in during}
    agreement = sum(served[i] == shadow[i] for i in served) / len(served)
    assert report["agreement"] == pytest.approx(agreement) and agreement < 1

    # Users label some shadowed predictions (confirming what v1 answered): both models'
    # accuracy on them shows up in the report.
    labelled = during[: MIN_LABELLED + 2]
    for prediction in labelled:
        response = public.post(
            "/feedback",
            json={"prediction_id": prediction["prediction_id"], "user_label": prediction["label"]},
        )
        assert response.status_code == 200, response.text
    report = wait_for(lambda: (r := shadow_report(public))["labelled"] == len(labelled) and r, 30)
    expected_shadow = sum(shadow[p["prediction_id"]] == p["label"] for p in labelled) / len(
        labelled
    )
    assert report["labelled"] == len(labelled)
    assert report["served_accuracy"] == 1.0
    assert report["shadow_accuracy"] == pytest.approx(expected_shadow)
    assert report["served_macro_f1"] > report["shadow_macro_f1"]

    # The registry keeps the report with the version, for the gate.
    kept = wait_for(
        lambda: (
            (m := client.get("/models/v2").json()["model"]).get("shadow", {}).get("labelled")
            == len(labelled)
            and m["shadow"]
        ),
        30,
    )
    assert kept["shadow_accuracy"] == pytest.approx(expected_shadow)
    assert kept["served_accuracy"] == 1.0 and kept["agreement"] == pytest.approx(agreement)

    samples = scrape(client)
    shadowed = metric_sum(samples, "sentiloop_shadow_predictions_total", shadow_version="v2")
    assert shadowed == len(texts)
    gauge = metric_sum(samples, "sentiloop_shadow_agreement", shadow_version="v2")
    assert gauge == pytest.approx(agreement)

    # Stopped: later requests are answered and no longer shadowed; the report stays.
    stopped = client.post("/predict/shadow/stop", json={})
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["report"]["state"] == "ended"
    assert stopped.json()["report"]["end_reason"] == "stopped"
    assert client.post("/predict/shadow/stop", json={}).status_code == 400
    after = public.post("/predict", json={"text": texts[0]}).json()
    assert after["label"] == before[0]["label"] and after["model_version"] == "v1"
    final = shadow_report(public)
    assert final["state"] == "ended"
    assert (final["shadowed"], final["labelled"]) == (len(texts), len(labelled))
    events = client.get("/events", params={"type_prefix": "shadow."}).json()["events"]
    assert {e["type"] for e in events} == {"shadow.started", "shadow.ended"}

    # Promoting v2 now meets the gate's shadow rule: less accurate on the labelled live
    # traffic than the served model, it is refused unless forced.
    refused = client.post("/models/v2/activate", json={"reason": "try it"})
    assert refused.status_code == 400, refused.text
    assert "less accurate than the served model" in refused.json()["error"]
    assert client.get("/models/active").json()["model"]["version"] == "v1"
    forced = client.post("/models/v2/activate", json={"reason": "try it", "force": True})
    assert forced.status_code == 200, forced.text
    activation = client.get("/models/activations").json()["activations"][0]
    assert activation["kind"] == "forced" and activation["version"] == "v2"
    client.close()
    public.close()
