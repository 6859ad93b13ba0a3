"""Drift on the real mesh (tiny preset): an in-domain stream of review sentences keeps the
score under the threshold and announces nothing; a stream of tweets raises it over the
threshold, GET /predict/drift says so, `model.drift_detected` is published once and the
metric carries the score; then drift starts a retraining run (trigger "drift") on fewer
labels than the policy's count."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sentiloop.data import vader
from sentiloop.testing import TINY_ENV, RunningMesh, metric_sum, scrape, start_mesh, wait_for

WINDOW = 100
THRESHOLD = 0.07
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"


# Drift is computed every half second over the last 100 predictions; the policy would
# need far more labels than any test here gives, so only drift can start a run.
ENV = TINY_ENV | {
    "SENTILOOP_DRIFT_INTERVAL_SECONDS": "0.5",
    "SENTILOOP_DRIFT_WINDOW": str(WINDOW),
    "SENTILOOP_DRIFT_MIN_WINDOW": str(WINDOW),
    "SENTILOOP_DRIFT_THRESHOLD": str(THRESHOLD),
    "SENTILOOP_RETRAIN_AUTO": "true",
    "SENTILOOP_RETRAIN_MIN_NEW_FEEDBACK": "1000",
    "SENTILOOP_RETRAIN_QUIET_SECONDS": "1",
    "SENTILOOP_RETRAIN_COOLDOWN_SECONDS": "0",
    "SENTILOOP_RETRAIN_POLL_SECONDS": "0.5",
    "SENTILOOP_RETRAIN_FOLDS": "2",
}


@pytest.fixture(scope="module")
def drift_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """The mesh whose drift the tests below only look at (whatever their order)."""
    running = start_mesh(tmp_path_factory.mktemp("drift"), extra_env=ENV)
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def client(drift_mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=drift_mesh.url, headers=drift_mesh.operator_headers, timeout=600
    ) as http:
        yield http


def bootstrap(client: httpx.Client) -> None:
    job = client.post("/model-init/bootstrap?auto_deploy=true", json={}).json()["job_name"]
    assert job
    wait_for(lambda: client.get("/model-init/endpoint-status").json()["status"] == "InService", 180)


def review_sentences(tmp_path: Path) -> list[str]:
    """The built-in dataset's test split: review sentences the model never trained on,
    from reviews none of its training sentences come from."""
    vader.build_dataset(tmp_path)
    with (tmp_path / "test" / "test.csv").open(encoding="utf-8") as rows:
        return [row["text"] for row in csv.DictReader(rows)]


def tweets() -> list[tuple[str, str]]:
    return [(text, label) for _, text, label in vader.load_domain("tweets")]


def drift(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/predict/drift")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def drift_events(client: httpx.Client) -> list[dict[str, Any]]:
    answer = client.get("/events", params={"type_prefix": "model.drift"}).json()
    events: list[dict[str, Any]] = answer["events"]
    return events


def predict(client: httpx.Client, texts: list[str]) -> list[dict[str, Any]]:
    response = client.post("/predict/batch", json={"texts": texts})
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


@pytest.fixture(scope="module")
def streams(
    client: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """Bootstrap, then an in-domain window, then a window of tweets: the drift report
    after each (every test of the module builds on this, whatever their order)."""
    bootstrap(client)
    seen: dict[str, dict[str, Any]] = {}
    # Served, but nothing asked yet.
    seen["idle"] = wait_for(lambda: (d := drift(client))["state"] == "not_enough_traffic" and d, 30)
    seen["idle_policy"] = client.get("/retrain/policy").json()
    predict(client, review_sentences(tmp_path_factory.mktemp("reviews"))[:WINDOW])
    seen["in_domain"] = wait_for(
        lambda: (d := drift(client))["window_size"] == WINDOW and d["computed_at"] and d, 60
    )
    seen["in_domain_events"] = {"events": drift_events(client)}
    seen["in_domain_metrics"] = {"score": metric_sum(scrape(client), "sentiloop_drift_score")}
    predict(client, [text for text, _ in tweets()[:WINDOW]])
    seen["drifted"] = wait_for(lambda: (d := drift(client))["state"] == "drifted" and d, 60)
    return seen


def test_an_in_domain_stream_stays_under_the_threshold(streams: dict[str, dict[str, Any]]) -> None:
    idle = streams["idle"]
    assert idle["window_size"] == 0 and idle["min_window"] == WINDOW
    assert "of the 100 predictions by v1 a drift score needs" in idle["reason"]
    calm = streams["in_domain"]
    assert calm["state"] == "ok", calm
    assert 0 < calm["score"] < THRESHOLD
    assert calm["score"] == calm["token_divergence"]
    assert 0 <= calm["confidence_shift"] <= 1
    assert calm["threshold"] == THRESHOLD and calm["max_window"] == WINDOW
    assert calm["reference_version"] == "v1" and len(calm["reference_dataset"]) == 64
    assert streams["in_domain_events"]["events"] == []
    assert 0 < streams["in_domain_metrics"]["score"] < THRESHOLD


def test_tweets_raise_the_score_the_event_and_the_metric(
    streams: dict[str, dict[str, Any]], client: httpx.Client
) -> None:
    drifted = streams["drifted"]
    calm = streams["in_domain"]
    assert drifted["score"] >= THRESHOLD and drifted["score"] > 2 * calm["score"], drifted
    assert drifted["window_size"] == WINDOW and drifted["reference_version"] == "v1"
    assert "at or over the threshold" in drifted["reason"]
    detected = wait_for(lambda: drift_events(client), 30)
    assert [e["type"] for e in detected] == ["model.drift_detected"]
    assert detected[0]["subject"] == "v1"
    assert detected[0]["attributes"]["score"] >= THRESHOLD
    assert detected[0]["attributes"]["window_size"] == WINDOW
    # Announced once per crossing, not once per computation (every 0.5 s here).
    computed = drift(client)["computed_at"]
    wait_for(lambda: drift(client)["computed_at"] != computed, 30)
    assert len(drift_events(client)) == 1
    samples = scrape(client)
    assert metric_sum(samples, "sentiloop_drift_score", version="v1") >= THRESHOLD
    assert metric_sum(samples, "sentiloop_drift_token_divergence", version="v1") >= THRESHOLD
    assert metric_sum(samples, "sentiloop_drift_window_size", version="v1") == WINDOW


def test_the_console_shows_the_drift(
    streams: dict[str, dict[str, Any]], drift_mesh: RunningMesh, browser: Any
) -> None:
    from playwright.sync_api import expect

    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    try:
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{drift_mesh.url}/#predict", wait_until="load")
        page.locator("body[data-refreshed]").wait_for()
        top = page.get_by_test_id("drift")
        expect(top).to_have_attribute("data-state", "drifted", timeout=30_000)
        expect(top).to_contain_text("≥ 0.070")
        expect(page.get_by_test_id("drift-state")).to_have_text("drifted")
        expect(page.get_by_test_id("drift-score")).to_contain_text("threshold 0.070")
        expect(page.get_by_test_id("drift-window")).to_contain_text(f"{WINDOW} predictions")
        expect(page.get_by_test_id("drift-reference")).to_contain_text("v1's training data")
        expect(page.get_by_test_id("drift-reason")).to_contain_text("at or over the threshold")
        expect(page.get_by_test_id("policy-drift")).to_contain_text("drift: drifted")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "console-drift.png"), full_page=True)
    finally:
        page.close()
    assert not errors, errors


def drift_runs(client: httpx.Client) -> list[dict[str, Any]]:
    answer = client.get("/events", params={"type_prefix": "retraining.triggered"}).json()
    return [e for e in answer["events"] if e["attributes"]["trigger"] == "drift"]


def policy(client: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = client.get("/retrain/policy").json()
    return answer


def test_drift_starts_a_run_on_fewer_labels_than_the_policy_waits_for(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    mesh = start_mesh(tmp_path_factory.mktemp("drift-trigger"), extra_env=ENV)
    try:
        with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=600) as client:
            run_on_drift(client, tmp_path_factory.mktemp("reviews"))
    finally:
        assert mesh.stop() == 0


def run_on_drift(client: httpx.Client, tmp_path: Path) -> None:
    bootstrap(client)
    # The drift watcher scores a newly served version within its interval.
    idle = wait_for(lambda: (p := policy(client))["drift_state"] != "no_model" and p, 30)
    assert idle["state"] == "collecting" and idle["retrain_on_drift"] is True
    assert idle["drift_state"] == "not_enough_traffic"
    assert "drift: not enough traffic" in idle["reason"]
    # Drifted, but a run needs 10 labels in all.
    predict(client, [text for text, _ in tweets()[:WINDOW]])
    waiting = wait_for(lambda: (p := policy(client))["drift_state"] == "drifted" and p, 60)
    assert waiting["state"] == "collecting", waiting
    assert "at least 10 labels in all (there are 0)" in waiting["reason"]
    assert drift_runs(client) == []
    # Ten labels on tweets (the window stays drifted): a run, with drift as its trigger.
    for text, label in tweets()[WINDOW : WINDOW + 10]:
        [prediction] = predict(client, [text])
        answer = client.post(
            "/feedback", json={"prediction_id": prediction["prediction_id"], "user_label": label}
        )
        assert answer.status_code == 200, answer.text
    wait_for(lambda: drift_runs(client), 60)
    [run] = drift_runs(client)
    assert run["attributes"]["feedback_total"] == 10
    wait_for(lambda: policy(client)["state"] != "running", 240, interval=1)
    # Whatever the gate decided, nothing new has come to learn from: no second run.
    after = policy(client)
    assert after["state"] == "collecting", after
    assert len(drift_runs(client)) == 1
    # Back in domain, on whichever version serves now (the gate decided which): the drift
    # is cleared, once.
    active = client.get("/models/active").json()["model"]["version"]
    wait_for(lambda: client.get("/predict/status").json()["model_version"] == active, 60)
    predict(client, review_sentences(tmp_path)[:WINDOW])
    cleared = wait_for(
        lambda: [e for e in drift_events(client) if e["type"] == "model.drift_cleared"], 60
    )
    assert len(cleared) == 1 and cleared[0]["attributes"]["score"] < THRESHOLD
    assert drift(client)["state"] == "ok"
