"""The labelling queue (GET /feedback/requests): the request queue ranks by uncertainty and
collapses duplicates; audit samples are uniform and flagged. The domain function on its own
first, then the stores it reads and writes, then the whole mesh (tiny preset)."""

from __future__ import annotations

import json
import math
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from sentiloop.core.db import Transaction, open_database
from sentiloop.core.errors import InvalidArgument
from sentiloop.feedback.requests import (
    Candidate,
    Queue,
    build_queue,
    entropy_uncertainty,
    group_near_duplicates,
    margin_uncertainty,
    normalise,
)
from sentiloop.feedback.store import FeedbackStore, NewFeedback
from sentiloop.inference.engine import Prediction, PredictionLog
from sentiloop.testing import TINY_ENV, RunningMesh, start_mesh, wait_for
from sentiloop.v1 import inference_pb2, inference_pb2_grpc

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def candidate(
    n: int,
    top: float,
    second: float | None = None,
    text: str | None = None,
    age_seconds: float | None = None,
) -> Candidate:
    """Prediction ``n`` with its top probability ``top`` and the runner-up ``second``
    (by default half the rest); made ``age_seconds`` before T0 (by default ``n``)."""
    second = (1 - top) / 2 if second is None else second
    scores = {"positive": top, "negative": second, "neutral": max(0.0, 1 - top - second)}
    return Candidate(
        prediction_id=f"p{n:04d}",
        text=text if text is not None else f"distinct review number {n} {'x' * (n % 7)} w{n}",
        label="positive",
        confidence=top,
        scores=scores,
        model_version="v1",
        created_at=T0 - timedelta(seconds=n if age_seconds is None else age_seconds),
    )


def queue(
    window: Sequence[Candidate],
    page_size: int = 20,
    audit_share: float = 0.0,
    answered_ids: set[str] | None = None,
    answered_texts: set[str] | None = None,
    issued: Sequence[str] = (),
    strategy: str = "",
    seed: int = 0,
) -> Queue:
    return build_queue(
        window,
        answered_ids=answered_ids or set(),
        answered_texts=answered_texts or set(),
        issued_audits=issued,
        page_size=page_size,
        audit_share=audit_share,
        strategy=strategy,
        rng=random.Random(seed),
    )


def ids(q: Queue, audit: bool | None = None) -> list[str]:
    return [r.prediction.prediction_id for r in q.requests if audit is None or r.audit == audit]


# ---------------------------------------------------------------- ranking


def test_most_uncertain_first_by_margin() -> None:
    # Margins 0.9, 0.05, 0.5, 0.3: the smallest margin is the most uncertain.
    window = [
        candidate(1, 0.95, 0.05),
        candidate(2, 0.50, 0.45),
        candidate(3, 0.70, 0.20),
        candidate(4, 0.60, 0.30),
    ]
    q = queue(window)
    assert ids(q) == ["p0002", "p0004", "p0003", "p0001"]
    assert [round(r.uncertainty, 6) for r in q.requests] == [0.95, 0.7, 0.5, 0.1]
    assert q.strategy == "margin" and q.window == 4 and q.unlabelled == 4
    assert not any(r.audit for r in q.requests)
    assert all(r.duplicates == 0 for r in q.requests)


def test_ties_go_to_the_more_recent_prediction() -> None:
    window = [candidate(n, 0.6, 0.3, age_seconds=age) for n, age in ((1, 30), (2, 10), (3, 20))]
    assert ids(queue(window)) == ["p0002", "p0003", "p0001"]


def test_entropy_can_be_asked_for_and_ranks_differently() -> None:
    # 0.5/0.45/0.05 is the closer call (margin 0.05); 0.5/0.25/0.25 the higher entropy.
    close_call = candidate(1, 0.5, 0.45)
    spread = candidate(2, 0.5, 0.25)
    assert ids(queue([close_call, spread])) == ["p0001", "p0002"]
    by_entropy = queue([close_call, spread], strategy="ENTROPY")
    assert by_entropy.strategy == "entropy"
    assert ids(by_entropy) == ["p0002", "p0001"]
    assert by_entropy.requests[0].uncertainty == pytest.approx(
        -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(3)
    )


def test_uncertainty_measures_span_zero_to_one() -> None:
    assert margin_uncertainty({"a": 1.0, "b": 0.0, "c": 0.0}) == 0.0
    assert margin_uncertainty({"a": 0.5, "b": 0.5, "c": 0.0}) == 1.0
    assert entropy_uncertainty({"a": 1.0, "b": 0.0, "c": 0.0}) == 0.0
    assert entropy_uncertainty({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}) == pytest.approx(1.0)


def test_the_page_size_and_strategy_are_checked() -> None:
    window = [candidate(n, 0.6) for n in range(30)]
    assert len(queue(window, page_size=0).requests) == 20  # the default
    assert len(queue(window, page_size=5).requests) == 5
    for bad in (-1, 101):
        with pytest.raises(InvalidArgument) as raised:
            queue(window, page_size=bad)
        assert set(raised.value.violations) == {"page_size"}
    with pytest.raises(InvalidArgument) as raised:
        queue(window, strategy="random")
    assert set(raised.value.violations) == {"strategy"}


# ---------------------------------------------------------------- near-duplicates


def test_normalising_folds_case_punctuation_and_spacing() -> None:
    assert normalise("  Great   PHONE!!! Love-it… ") == "great phone love it"
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in "Great")  # NFKC folds it
    assert normalise(f"{full_width} phone") == "great phone"


def test_near_duplicates_are_collapsed_into_their_most_uncertain_member() -> None:
    battery = [
        "The battery died after two days of use",
        "the battery died after two days of use!!!",  # identical once normalised
        "The battery died after two days of use, sadly",  # Jaccard 8/9
        "THE   BATTERY died after two DAYS of use.",
    ]
    window = [
        candidate(1, 0.9, text=battery[0]),
        candidate(2, 0.55, 0.40, text=battery[1]),  # the group's most uncertain
        candidate(3, 0.8, text=battery[2]),
        candidate(4, 0.7, text=battery[3]),
        # Shares most words but is not a near-duplicate: Jaccard 7/11.
        candidate(5, 0.6, 0.35, text="The battery died after two weeks of heavy use here"),
        candidate(6, 0.99, text="Fast delivery and a lovely screen"),
    ]
    q = queue(window)
    assert ids(q) == ["p0002", "p0005", "p0006"]
    assert [r.duplicates for r in q.requests] == [3, 0, 0]
    assert q.unlabelled == 6


def test_a_lone_member_of_a_group_is_asked_about_once() -> None:
    # Equally uncertain duplicates: the most recent one stands for the group.
    window = [
        candidate(1, 0.6, 0.3, text="Works as described", age_seconds=50),
        candidate(2, 0.6, 0.3, text="works as described.", age_seconds=5),
        candidate(3, 0.6, 0.3, text="WORKS AS DESCRIBED", age_seconds=20),
    ]
    q = queue(window)
    assert ids(q) == ["p0002"] and q.requests[0].duplicates == 2


def _naive_groups(texts: Sequence[str], threshold: float = 0.8) -> list[list[int]]:
    """The same greedy grouping, comparing each text with every group's first member."""
    keys = [normalise(t) or t.strip().casefold() for t in texts]
    groups: list[list[int]] = []
    for i, key in enumerate(keys):
        tokens = set(key.split())
        for group in groups:
            first = keys[group[0]]
            rep = set(first.split())
            same_key = any(keys[j] == key for j in group)
            similar = bool(tokens) and len(tokens & rep) >= threshold * len(tokens | rep) - 1e-9
            if same_key or similar:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def test_the_prefix_filter_finds_what_comparing_every_pair_finds() -> None:
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(14)]
    texts = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 9))) for _ in range(400)]
    texts += ["", "!!!", "  "]
    assert group_near_duplicates(texts) == _naive_groups(texts)


# ---------------------------------------------------------------- what is labelled


def test_labelled_predictions_and_their_duplicates_are_left_out() -> None:
    window = [
        candidate(1, 0.5, 0.45, text="Screen cracked in a week"),
        candidate(2, 0.6, 0.3, text="screen cracked in a week!"),
        candidate(3, 0.55, 0.4, text="Arrived late but works"),
        candidate(4, 0.7, 0.2, text="Exactly what I ordered"),
        candidate(5, 0.9, text="Love the colour"),
    ]
    q = queue(window, audit_share=0.5, answered_ids={"p0002"}, answered_texts={"Love the colour"})
    # p0001 is a near-duplicate of the answered p0002; p0005's text has feedback.
    assert sorted(ids(q)) == ["p0003", "p0004"]
    assert q.unlabelled == 2
    for seed in range(50):  # audit samples neither
        assert set(ids(queue(window, audit_share=1.0, answered_ids={"p0002"}, seed=seed))) <= {
            "p0003",
            "p0004",
            "p0005",
        }


# ---------------------------------------------------------------- audit samples


def test_the_audit_share_is_honoured() -> None:
    window = [candidate(n, 0.5 + n / 200) for n in range(60)]
    assert [len(ids(queue(window, 20, 0.1, seed=s), audit=True)) for s in range(20)] == [2] * 20
    assert ids(queue(window, 20, 0.0), audit=True) == []
    assert len(ids(queue(window, 20, 1.0), audit=True)) == 20
    # A share that is not a whole number of requests holds on average.
    counts = [len(ids(queue(window, 10, 0.25, seed=s), audit=True)) for s in range(2000)]
    assert set(counts) == {2, 3}
    assert sum(counts) / len(counts) == pytest.approx(2.5, abs=0.05)
    # A short queue gets its share too, not the share of the page asked for.
    short = queue(window[:10], 100, 0.2)
    assert len(short.requests) == 10 and len(ids(short, audit=True)) == 2


def test_audit_samples_are_flagged_and_spread_through_the_queue() -> None:
    window = [candidate(n, 0.4 + n / 100, 0.3) for n in range(40)]
    q = queue(window, 20, 0.1, seed=3)
    flags = [r.audit for r in q.requests]
    assert len(flags) == 20 and [i for i, f in enumerate(flags) if f] == [5, 15]
    ranked = [r.uncertainty for r in q.requests if not r.audit]
    assert ranked == sorted(ranked, reverse=True)
    # The ranked ones are still the most uncertain of what the audit samples left.
    audit_ids = set(ids(q, audit=True))
    rest = sorted(
        (c for c in window if c.prediction_id not in audit_ids),
        key=lambda c: -margin_uncertainty(c.scores),
    )
    assert ids(q, audit=False) == [c.prediction_id for c in rest[:18]]


def test_audit_draws_are_uniform_whatever_the_uncertainty() -> None:
    # Uncertainties from nearly sure to a coin flip: an audit draw must ignore them.
    window = [candidate(n, 0.99 - n * 0.016, 0.005 + n * 0.008) for n in range(30)]
    draws = 6000
    chosen: Counter[str] = Counter()
    for seed in range(draws):
        q = queue(window, page_size=10, audit_share=0.1, seed=seed)
        [audit] = ids(q, audit=True)
        chosen[audit] += 1
    assert set(chosen) == {c.prediction_id for c in window}
    expected = draws / len(window)
    chi_square = sum((chosen[c.prediction_id] - expected) ** 2 / expected for c in window)
    # 29 degrees of freedom: the 0.1% critical value is 58.3; a biased draw (say the
    # more uncertain half twice as likely) scores in the thousands.
    assert chi_square < 70, (chi_square, chosen)
    # The ranked part, by contrast, always takes the most uncertain.
    assert Counter(ids(queue(window, 10, 0.1, seed=1), audit=False)) <= Counter(
        c.prediction_id for c in window[-10:]
    )


def test_issued_audit_samples_come_back_first() -> None:
    window = [candidate(n, 0.5 + n / 100, 0.3) for n in range(40)]
    first = queue(window, 20, 0.1, seed=1)
    audits = ids(first, audit=True)
    # Asked again with other randomness, the queue keeps its samples (the console polls),
    # whichever way this call's rounding goes.
    for seed in range(20):
        again = queue(window, 20, 0.1, issued=audits, seed=seed)
        assert ids(again) == ids(first)
    # Three issued on a queue of 20 at 0.1 (two at most by rounding): the share rounded up
    # comes back each time, never one of them this call and not the next.
    three = [c.prediction_id for c in window[:3]]
    for seed in range(20):
        assert ids(queue(window, 20, 0.1, issued=three, seed=seed), audit=True) == three[:2]
    # One issued on a queue of 14 at 0.1 (1.4: one or two by rounding): it comes back
    # alone, with no fresh sample added by a poll that rounds up.
    short = window[:14]
    one = [short[5].prediction_id]
    for seed in range(20):
        assert ids(queue(short, 20, 0.1, issued=one, seed=seed), audit=True) == one
    # One answered: it leaves, the other stays, and one new sample fills its place.
    answered = queue(window, 20, 0.1, issued=audits, answered_ids={audits[0]}, seed=5)
    assert audits[0] not in ids(answered)
    assert audits[1] in ids(answered, audit=True) and len(ids(answered, audit=True)) == 2
    # Samples issued beyond this page's share wait for their turn, outside the ranked part.
    many = [c.prediction_id for c in window[:6]]
    small = queue(window, 10, 0.1, issued=many, seed=2)
    assert ids(small, audit=True) == ["p0000"]
    assert not set(many) & set(ids(small, audit=False))


# ---------------------------------------------------------------- the stores


def test_recent_predictions_come_newest_first(database_url: str, tmp_path: Path) -> None:
    log = PredictionLog(
        open_database(database_url, tmp_path / "unused.db", schema="inference", durable=False)
    )
    for n in range(5):
        log.record(
            [
                Prediction(f"id{n}{k}", f"text {n}{k}", "positive", 0.9, {"positive": 0.9}, "v1")
                for k in range(2)
            ]
        )
    recent = log.recent(3)
    assert [p.id for p in recent] == ["id41", "id40", "id31"]  # a batch: last logged first
    assert recent[0].created_at is not None and recent[0].scores == {"positive": 0.9}
    since = log.recent(100, since=log.get("id20").created_at)
    assert [p.id for p in since] == ["id41", "id40", "id31", "id30", "id21", "id20"]
    for bad in (0, 5001):
        with pytest.raises(InvalidArgument):
            log.recent(bad)
    # The index gives the order: no sort of the whole log per call.
    for where in ("", "WHERE created_at >= ?"):

        def explain(tx: Transaction, where: str = where) -> str:
            params = ("2026-01-01T00:00:00+00:00", 3) if where else (3,)
            if tx.engine == "sqlite":
                sql = f"EXPLAIN QUERY PLAN SELECT * FROM predictions {where}"
                sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
                return " ".join(str(row["detail"]) for row in tx.fetch(sql, params))
            # A handful of rows: PostgreSQL would rather read them all; told not to, it
            # shows whether the index alone can give the order.
            tx.execute("SET LOCAL enable_seqscan = off")
            sql = f"EXPLAIN SELECT * FROM predictions {where}"
            sql += " ORDER BY created_at DESC, seq DESC LIMIT ?"
            return " ".join(str(row["QUERY PLAN"]) for row in tx.fetch(sql, params))

        plan = log.database.run(explain)
        assert "predictions_created_at" in plan, plan
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
    log.close()


OLD_FEEDBACK_SCHEMA = """
CREATE TABLE feedback (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    text             TEXT NOT NULL,
    model_prediction TEXT NOT NULL DEFAULT '',
    user_label       TEXT NOT NULL,
    prediction_id    TEXT NOT NULL DEFAULT '',
    model_version    TEXT NOT NULL DEFAULT '',
    idempotency_key  TEXT UNIQUE,
    created_at       TEXT NOT NULL
);
INSERT INTO feedback (text, user_label, prediction_id, created_at)
    VALUES ('from before', 'positive', 'old', '2026-01-01T00:00:00+00:00');
"""


def test_feedback_citing_an_audit_sample_is_marked_in_an_old_database(tmp_path: Path) -> None:
    path = tmp_path / "feedback.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_FEEDBACK_SCHEMA)
    store = FeedbackStore(path, max_text_length=100)
    [old] = store.list()
    assert old.audit is False
    store.issue_audit_requests(["a1", "a2"])
    store.issue_audit_requests(["a2", "a3"])  # once each; a2 keeps its first time
    assert store.audit_requests(["a3", "a2", "a1", "x"]) == ["a1", "a2", "a3"]
    audited, _ = store.submit(NewFeedback(text="t1", user_label="negative", prediction_id="a2"))
    chosen, _ = store.submit(NewFeedback(text="t2", user_label="neutral", prediction_id="c1"))
    plain, _ = store.submit(NewFeedback(text="t3", user_label="positive"))
    assert (audited.audit, chosen.audit, plain.audit) == (True, False, False)
    assert store.answered(["a2", "c1", "a1", ""], ["t3", "t4"]) == ({"a2", "c1"}, {"t3"})
    store.close()

    reopened = FeedbackStore(path, max_text_length=100)  # the migration runs once
    stats = reopened.stats()
    assert stats.total == 4 and stats.audit == 1
    lines = [json.loads(line) for line in reopened.export()[0].decode().splitlines()]
    assert [line.get("audit") for line in lines] == [None, True, None, None]
    # Records without the flag serialise as they did before it existed.
    assert set(lines[0]) == {
        "id",
        "text",
        "user_label",
        "model_prediction",
        "model_version",
        "prediction_id",
        "created_at",
    }
    reopened.close()


# ---------------------------------------------------------------- the mesh


# Each mesh test has a mesh of its own: the queue test counts every prediction in the log,
# so another test's predictions (in whatever order pytest-randomly runs them) would change
# its numbers.
@pytest.fixture
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(tmp_path_factory.mktemp("label-requests"), extra_env=TINY_ENV)
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=120) as http:
        started = http.post("/model-init/bootstrap?auto_deploy=true", json={})
        assert started.status_code == 200, started.text
        wait_for(
            lambda: http.get("/model-init/endpoint-status").json()["status"] == "InService", 240
        )
        yield http


BATTERY = [
    "The battery died after two days",
    "the battery died after two days!!",
    "THE BATTERY   died after two DAYS.",
]
SCREEN = [
    "Great phone, love the screen and the battery life",
    "great phone love the screen and the battery life too",
]
OTHERS = [
    "Arrived on time and works fine",
    "Worst purchase I have ever made",
    "It is a phone case",
    "Absolutely fantastic value for the money",
    "The box was damaged but the item was fine",
    "Customer support never answered my emails",
    "Does exactly what it says",
    "Too small for my hands",
    "I would buy it again",
    "Stopped charging after a month",
    "The colour is not what the picture shows",
    "Setup took five minutes",
]


def group_of(text: str) -> str:
    return "battery" if text in BATTERY else "screen" if text in SCREEN else text


def group_size(text: str) -> int:
    return {"battery": len(BATTERY), "screen": len(SCREEN)}.get(group_of(text), 1)


def test_the_queue_through_envoy(mesh: RunningMesh, client: httpx.Client) -> None:
    predicted: dict[str, dict[str, Any]] = {}
    for text in BATTERY + SCREEN + OTHERS:
        answer = client.post("/predict", json={"text": text})
        assert answer.status_code == 200, answer.text
        predicted[answer.json()["prediction_id"]] = answer.json()

    response = client.get("/feedback/requests", params={"page_size": 20})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["strategy"] == "margin" and body["audit_share"] == 0.1
    assert body["window"] == len(predicted) and body["unlabelled"] == len(predicted)
    items = body["requests"]
    # 14 groups (the three battery texts are one, the two screen texts another): a request
    # each, one of them or two an audit sample.
    assert len(items) == 14, items
    ranked_groups = [group_of(item["text"]) for item in items if not item["audit"]]
    audit_groups = {group_of(item["text"]) for item in items if item["audit"]}
    assert len(set(ranked_groups)) == len(ranked_groups) and not audit_groups & set(ranked_groups)
    for item in items:
        assert item["duplicates"] == group_size(item["text"]) - 1, item
        logged = predicted[item["prediction_id"]]
        for field in ("text", "label", "confidence", "scores", "model_version"):
            assert item[field] == logged[field], field
        assert item["created_at"] and 0 <= item["uncertainty"] <= 1
        top, second = sorted(logged["scores"].values(), reverse=True)[:2]
        assert item["uncertainty"] == pytest.approx(1 - (top - second))
    ranked = [item["uncertainty"] for item in items if not item["audit"]]
    assert ranked == sorted(ranked, reverse=True)
    audits = [item for item in items if item["audit"]]
    assert 1 <= len(audits) <= 2, items  # 10% of 14, rounded at random
    # Asked again, the same samples (recorded when issued).
    again = client.get("/feedback/requests", params={"page_size": 20}).json()["requests"]
    assert {i["prediction_id"] for i in again if i["audit"]} == {a["prediction_id"] for a in audits}

    audit = audits[0]
    chosen = next(item for item in items if not item["audit"])
    stored_audit = client.post(
        "/feedback", json={"prediction_id": audit["prediction_id"], "user_label": "negative"}
    ).json()["feedback"]
    stored_chosen = client.post(
        "/feedback", json={"prediction_id": chosen["prediction_id"], "user_label": "positive"}
    ).json()["feedback"]
    assert stored_audit["audit"] is True and stored_audit["text"] == audit["text"]
    assert stored_chosen["audit"] is False and stored_chosen["text"] == chosen["text"]

    after = client.get("/feedback/requests", params={"page_size": 20}).json()
    left = {item["prediction_id"] for item in after["requests"]}
    assert audit["prediction_id"] not in left and chosen["prediction_id"] not in left
    answered_groups = {group_of(audit["text"]), group_of(chosen["text"])}
    assert not [i for i in after["requests"] if group_of(i["text"]) in answered_groups]
    assert after["unlabelled"] == len(predicted) - (1 + audit["duplicates"]) - (
        1 + chosen["duplicates"]
    )

    stats = client.get("/feedback/stats").json()
    assert stats["total"] == 2 and stats["audit"] == 1
    export = client.post("/feedback/export", json={}).json()
    lines = [json.loads(line) for line in Path(export["location"]).read_text().splitlines()]
    flags = {line["prediction_id"]: line.get("audit", False) for line in lines}
    assert flags == {audit["prediction_id"]: True, chosen["prediction_id"]: False}


def test_recent_predictions_are_for_the_services_only(
    mesh: RunningMesh, client: httpx.Client
) -> None:
    for text in ("The first for the log", "The second for the log", "One more for the log"):
        client.post("/predict", json={"text": text}).raise_for_status()
    with mesh.operator_channel(mesh.address("inference"), role="service") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        answer = stub.ListRecentPredictions(
            inference_pb2.ListRecentPredictionsRequest(page_size=2), timeout=10
        )
        newest = answer.predictions[0]
        assert [p.text for p in answer.predictions] == [
            "One more for the log",
            "The second for the log",
        ]
        assert newest.id and newest.label and newest.model_version == "v1"
        assert newest.scores[newest.label] == pytest.approx(newest.confidence)
        since = inference_pb2.ListRecentPredictionsRequest(page_size=100)
        since.since.CopyFrom(newest.created_at)
        assert [p.id for p in stub.ListRecentPredictions(since).predictions] == [newest.id]
    with mesh.operator_channel(mesh.address("inference")) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListRecentPredictions(inference_pb2.ListRecentPredictionsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The public route checks its input before asking inference.
    bad = client.get("/feedback/requests", params={"page_size": 500})
    assert bad.status_code == 400 and "page_size" in bad.text
