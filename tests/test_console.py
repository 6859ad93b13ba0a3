"""The operator's web console on GET /, served by Envoy on the mesh's origin: its files over
HTTP, then the page in a real Chromium (Playwright) driving real meshes: the served
version, predictions and their feedback, a tiny bootstrap followed live, an activation, a
shadow evaluation started, followed and stopped, the live event feed, and every failure
shown as a message. Screenshots of each view go to test-artifacts/screenshots/ (CI uploads
them)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from sentiloop.core import static_site
from sentiloop.testing import TINY_ENV, RunningMesh, start_mesh, wait_for

# Installed by `make system-deps` (apt-get); Playwright never downloads a browser here.
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
UI_TIMEOUT_MS = 60_000
# A tiny bootstrap takes seconds alone; other work on a 2-core machine can stretch it.
TRAINING_TIMEOUT_MS = 240_000
LAPTOPS = [{"width": 1366, "height": 768}, {"width": 1440, "height": 900}]
LABELS = ("negative", "neutral", "positive")
VIEWS = ("models", "training", "predict", "label", "events")


# ---------------------------------------------------------------- meshes


@pytest.fixture(scope="module")
def empty_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """A mesh that never gets a model (no test here bootstraps it): the 503 and 401 pages."""
    running = start_mesh(tmp_path_factory.mktemp("console-empty"), extra_env=TINY_ENV)
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def live_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """The mesh the console trains, serves and switches (tiny models)."""
    running = start_mesh(tmp_path_factory.mktemp("console-live"), extra_env=TINY_ENV)
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def operator(live_mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=live_mesh.url, headers=live_mesh.operator_headers, timeout=60
    ) as client:
        yield client


def served_version(client: httpx.Client) -> str:
    status = client.get("/predict/status").json()
    return str(status["model_version"]) if status["status"] == "InService" else ""


def version_of_job(client: httpx.Client, job_name: str) -> str:
    models = client.get("/models").json()["models"]
    return next((m["version"] for m in models if m["training_job_name"] == job_name), "")


def wait_until_served(client: httpx.Client, job_name: str) -> str:
    """The version a job with auto-deploy became, once InferenceService serves it."""
    version: str = wait_for(lambda: version_of_job(client, job_name), timeout=120)
    wait_for(lambda: served_version(client) == version, timeout=120)
    return version


def bootstrap_tiny(client: httpx.Client) -> str:
    """Trains and deploys a tiny model over the API; returns its version once served."""
    started = client.post("/model-init/bootstrap", json={"preset": "tiny", "auto_deploy": True})
    assert started.status_code == 200, started.text
    job = started.json()["job_name"]
    with client.stream("GET", f"/model-init/watch/{job}", timeout=300) as response:
        last = [json.loads(line) for line in response.iter_lines() if line.strip()][-1]
    assert last["done"] and last["job"]["status"] == "Completed", last
    return wait_until_served(client, job)


@pytest.fixture
def served(operator: httpx.Client) -> str:
    """The version serving now: tests in any order before this one may have bootstrapped,
    activated or rolled back; if none has, a new one."""
    return served_version(operator) or bootstrap_tiny(operator)


@pytest.fixture
def two_versions(served: str, operator: httpx.Client) -> list[str]:
    while operator.get("/models").json()["count"] < 2:
        bootstrap_tiny(operator)
    return [m["version"] for m in operator.get("/models").json()["models"]]


# ---------------------------------------------------------------- the files over HTTP


@pytest.fixture
def empty_http(empty_mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=empty_mesh.url, timeout=10) as client:
        yield client


@pytest.mark.parametrize("path", ["/", "/?view=training"])
def test_console_page(empty_http: httpx.Client, path: str) -> None:
    response = empty_http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == static_site.PAGE_CACHE
    assert response.headers["content-security-policy"] == static_site.CONSOLE_CSP
    assert "script-src 'self'" in static_site.CONSOLE_CSP
    assert "frame-ancestors 'none'" in static_site.CONSOLE_CSP
    assert response.content == (static_site.CONSOLE_DIR / "index.html").read_bytes()
    # HEAD answers the same headers, without the body.
    head = empty_http.head(path)
    assert head.status_code == 200
    assert head.headers["content-type"] == "text/html; charset=utf-8"
    assert head.content == b""


@pytest.mark.parametrize("name", list(static_site.CONSOLE_ASSETS))
def test_console_assets_are_the_files(empty_http: httpx.Client, name: str) -> None:
    content_type, cache_control = static_site.CONSOLE_ASSETS[name]
    response = empty_http.get(f"/console/{name}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == cache_control
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (static_site.CONSOLE_DIR / name).read_bytes()
    head = empty_http.head(f"/console/{name}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == content_type


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/"),
        ("PUT", "/"),
        ("DELETE", "/"),
        ("POST", "/console/app.js"),
        ("PATCH", "/console/uPlot.min.css"),
    ],
)
def test_other_methods_are_not_served(empty_http: httpx.Client, method: str, path: str) -> None:
    response = empty_http.request(method, path, content=b"{}")
    assert response.status_code in (404, 405), response.text
    assert not response.headers.get("content-type", "").startswith("text/html")
    assert len(response.content) < 1000
    # The API's 404 in its error shape, not the file.
    assert response.json()["detail"]
    assert b"<html" not in response.content and b"leeoniya" not in response.content


@pytest.mark.parametrize(
    "path",
    ["/console", "/console/", "/console/index.html", "/console/README.md", "/index.html"],
)
def test_unknown_console_paths_are_404(empty_http: httpx.Client, path: str) -> None:
    response = empty_http.get(path)
    assert response.status_code == 404
    assert b"<html" not in response.content


def test_page_loads_only_served_files() -> None:
    """Every file index.html names is a route, and the vendored uPlot is the documented one."""
    page = (static_site.CONSOLE_DIR / "index.html").read_text()
    named = set(re.findall(r'(?:src|href)="/console/([^"]+)"', page))
    assert named == set(static_site.CONSOLE_ASSETS)
    readme = (static_site.CONSOLE_DIR / "README.md").read_text()
    banner = (static_site.CONSOLE_DIR / "uPlot.iife.min.js").read_text()[:80]
    version = re.search(r"uPlot \(v([\d.]+)\)", banner)
    assert version, banner
    assert f"**`uplot` {version.group(1)}**" in readme
    assert (static_site.CONSOLE_DIR / "LICENSE").read_text().startswith("The MIT License")


def test_script_inserts_no_html() -> None:
    """API data reaches the page as text only (the page holds the operator token)."""
    script = (static_site.CONSOLE_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


# ---------------------------------------------------------------- the page in Chromium


@pytest.fixture(scope="module")
def browser(browser: Any) -> Iterator[Any]:
    """conftest's Chromium, with assertions that wait as long as page actions do: the page
    polls every few seconds."""
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    yield browser
    expect.set_options(timeout=5_000)  # Playwright's default, for other modules


@dataclass
class Console:
    page: Any
    mesh: RunningMesh
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    errors: list[str] = field(default_factory=list)  # uncaught errors, CSP violations

    def by(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def view(self, name: str) -> None:
        self.by(f"tab-{name}").click()
        self.page.locator(f"body[data-view='{name}']").wait_for()

    def sign_in(self, token: str) -> None:
        self.by("operator-token").fill(token)
        self.by("token-save").click()
        self.page.locator("body[data-token='set']").wait_for()

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / name))

    def off_origin(self) -> list[str]:
        origin = urlsplit(self.mesh.url)
        return [
            url
            for url in self.requests
            if (urlsplit(url).scheme, urlsplit(url).netloc) != (origin.scheme, origin.netloc)
        ]


@pytest.fixture
def open_console(browser: Any) -> Iterator[Callable[..., Console]]:
    contexts: list[Any] = []
    opened: list[Console] = []

    def open_(mesh: RunningMesh, view: str = "models", token: str = "") -> Console:
        context = browser.new_context(viewport=LAPTOPS[0])
        contexts.append(context)
        console = Console(context.new_page(), mesh)
        opened.append(console)
        console.page.set_default_timeout(UI_TIMEOUT_MS)
        console.page.on("request", lambda request: console.requests.append(request.url))
        console.page.on("pageerror", lambda error: console.errors.append(str(error)))
        console.page.on(
            "console",
            lambda message: (
                console.errors.append(message.text)
                if "Content Security Policy" in message.text
                else None
            ),
        )
        console.page.goto(f"{mesh.url}/#{view}", wait_until="load")
        # The first round of calls has answered (app.js sets it after each refresh).
        console.page.locator("body[data-refreshed]").wait_for()
        if token:
            console.sign_in(token)
        return console

    yield open_
    for context in contexts:
        context.close()
    for console in opened:
        assert not console.errors, console.errors
        assert not console.off_origin(), console.off_origin()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_page_shows_the_served_version(
    open_console: Callable[..., Console], live_mesh: RunningMesh, served: str
) -> None:
    console = open_console(live_mesh)
    expect(console.by("serving-version")).to_have_text(served)
    expect(console.by("serving-detail")).to_contain_text("InService")
    expect(console.by("health")).to_contain_text("healthy")
    row = console.page.locator(f"[data-testid=model-row][data-version='{served}']")
    expect(row).to_have_attribute("data-active", "true")
    # Engine, precision, test metrics and lineage of the version, as the registry has them.
    model = httpx.get(f"{live_mesh.url}/models/{served}").json()["model"]
    expect(row).to_contain_text(model["engine"])
    expect(row).to_contain_text(model["training_job_name"])
    expect(row).to_contain_text(model["dataset_hash"][:12])
    expect(row).to_contain_text(f"{model['test_metrics']['accuracy'] * 100:.1f}%")
    expect(console.by("confusion-test")).to_be_visible()
    # Every view fits both laptop screens without sideways scrolling.
    for viewport in LAPTOPS:
        console.page.set_viewport_size(viewport)
        for view in VIEWS:
            console.view(view)
            width = console.page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            assert width[0] <= width[1], (viewport, view, width)
    assert f"{live_mesh.url}/console/uPlot.iife.min.js" in console.requests


def test_prediction_and_feedback_round_trip(
    open_console: Callable[..., Console],
    live_mesh: RunningMesh,
    served: str,
    operator: httpx.Client,
) -> None:
    console = open_console(live_mesh, view="predict")
    text = "The battery died after two days and support never answered"
    console.by("predict-text").fill(text)
    console.by("predict-submit").click()
    label_chip = console.by("predict-label")
    expect(label_chip).to_be_visible()
    predicted = label_chip.inner_text()
    assert predicted in LABELS
    expect(console.by("predict-version")).to_have_text(served)
    expect(console.by("predict-confidence")).to_have_text(re.compile(r"^\d+\.\d%$"))
    for label in LABELS:
        expect(console.by(f"predict-score-{label}")).to_have_text(re.compile(r"^\d+\.\d%$"))
    prediction_id = console.by("predict-id").inner_text()
    assert prediction_id

    # Correct it with one click.
    corrected = next(label for label in LABELS if label != predicted)
    console.by(f"feedback-correct-{corrected}").click()
    message = console.by("feedback-msg")
    expect(message).to_contain_text("recorded")
    expect(message).to_contain_text(f"corrected to {corrected}")
    feedback_id = message.get_attribute("data-feedback-id")
    records = operator.get("/feedback", params={"page_size": 1000}).json()["feedback"]
    record = next(r for r in records if r["id"] == feedback_id)
    assert record["prediction_id"] == prediction_id
    assert record["user_label"] == corrected
    assert record["model_prediction"] == predicted
    assert record["model_version"] == served
    assert record["text"] == text

    # Confirm a second prediction with one click; the statistics on the page follow.
    total = operator.get("/feedback/stats").json()["total"]
    console.by("predict-text").fill("Absolutely love it, works perfectly every day")
    console.by("predict-submit").click()
    expect(console.by("predict-id")).not_to_have_text(prediction_id)
    second_id = console.by("predict-id").inner_text()
    second_label = console.by("predict-label").inner_text()
    console.by("feedback-confirm").click()
    expect(console.by("feedback-msg")).to_contain_text(f"confirmed {second_label}")
    records = operator.get("/feedback", params={"page_size": 1000}).json()["feedback"]
    confirmed = next(r for r in records if r["prediction_id"] == second_id)
    assert confirmed["user_label"] == confirmed["model_prediction"] == second_label
    expect(console.by("stats-total")).to_have_text(str(total + 1))
    expect(console.by("policy-state")).to_be_visible()
    expect(console.by("policy-remaining")).to_contain_text("threshold")
    console.screenshot("console-predict.png")


def test_labelling_queue_stores_feedback_in_one_click(
    open_console: Callable[..., Console],
    live_mesh: RunningMesh,
    served: str,
    operator: httpx.Client,
) -> None:
    # Ten new texts at least: a tenth of the queue is then one audit sample or more.
    texts = [f"Queue check {n}: the {word} arrived" for n, word in enumerate(LABELLING_WORDS)]
    batch = operator.post("/predict/batch", json={"texts": texts})
    assert batch.status_code == 200, batch.text
    console = open_console(live_mesh, view="label")
    # The first audit sample issued and the most uncertain request stay in the queue
    # from poll to poll until they are answered.
    item = console.page.locator("[data-testid=label-item][data-audit=true]").first
    other = console.page.locator("[data-testid=label-item][data-audit=false]").first
    expect(item).to_be_visible()
    expect(item.get_by_test_id("label-audit")).to_have_text("audit")
    expect(other.get_by_test_id("label-audit")).to_have_count(0)
    audit_id = item.get_attribute("data-prediction-id")
    ranked_id = other.get_attribute("data-prediction-id")
    logged = operator.get(f"/predictions/{audit_id}").json()["prediction"]
    expect(item.get_by_test_id("label-text")).to_have_text(logged["text"])
    expect(item.get_by_test_id("label-predicted")).to_have_text(logged["label"])
    expect(item.get_by_test_id("label-confidence")).to_have_text(
        f"{logged['confidence'] * 100:.1f}%"
    )
    queue = operator.get("/feedback/requests", params={"page_size": 20}).json()["requests"]
    assert {audit_id, ranked_id} <= {r["prediction_id"] for r in queue}
    console.screenshot("console-label.png")

    # One click: feedback citing the prediction, marked as an audit sample; the item leaves.
    item = console.page.locator(f"[data-testid=label-item][data-prediction-id='{audit_id}']")
    other = console.page.locator(f"[data-testid=label-item][data-prediction-id='{ranked_id}']")
    item.get_by_test_id("label-negative").click()
    message = console.by("label-msg")
    expect(message).to_contain_text("recorded: negative (an audit sample)")
    expect(item).to_have_count(0)
    records = operator.get("/feedback", params={"page_size": 1000}).json()["feedback"]
    record = next(r for r in records if r["id"] == message.get_attribute("data-feedback-id"))
    assert record["prediction_id"] == audit_id and record["user_label"] == "negative"
    assert record["audit"] is True and record["text"] == logged["text"]
    other.get_by_test_id("label-positive").click()
    expect(message).to_contain_text("recorded: positive")
    expect(other).to_have_count(0)
    records = operator.get("/feedback", params={"page_size": 1000}).json()["feedback"]
    record = next(r for r in records if r["prediction_id"] == ranked_id)
    # A poll after the first screenshot may have drawn this one as an audit sample too
    # (each poll draws its share afresh): the page says which it was, as the store does.
    assert record["user_label"] == "positive"
    assert record["audit"] is ("(an audit sample)" in (message.text_content() or ""))
    left = operator.get("/feedback/requests", params={"page_size": 100}).json()["requests"]
    assert not {audit_id, ranked_id} & {r["prediction_id"] for r in left}


LABELLING_WORDS = (
    "parcel", "charger", "blender", "headset", "kettle",
    "lamp", "keyboard", "toaster", "speaker", "backpack", "umbrella", "tripod",
)  # fmt: skip


# Every value the progress bar takes from here on. Several updates can land in one task
# (a chunk of stream lines), before the observer runs: each record's old value, then the
# current one, give the whole sequence.
RECORD_PROGRESS = """() => {
  window.progressOldValues = [];
  new MutationObserver((records) => {
    for (const record of records) {
      if (record.target.dataset.testid === "job-progress") {
        window.progressOldValues.push(record.oldValue);
      }
    }
  }).observe(document.body,
    {subtree: true, attributes: true, attributeOldValue: true, attributeFilter: ["value"]});
}"""


def test_bootstrap_from_the_page_shows_live_progress(
    open_console: Callable[..., Console], live_mesh: RunningMesh, operator: httpx.Client
) -> None:
    console = open_console(live_mesh, view="training", token=live_mesh.token("operator"))
    console.page.evaluate(RECORD_PROGRESS)
    console.by("bootstrap-preset").select_option("tiny")
    console.by("bootstrap-submit").click()
    expect(console.by("training-msg")).to_contain_text("started")
    job = operator.get("/model-init/jobs").json()["jobs"][0]
    assert job["preset"] == "tiny"
    card = console.page.locator(f"[data-testid=job-card][data-job='{job['job_name']}']")
    expect(card).to_be_visible()
    expect(card).to_have_attribute("data-done", "true", timeout=TRAINING_TIMEOUT_MS)

    # The bar advanced step by step to the end, and the loss curve got a point per report.
    bar = card.get_by_test_id("job-progress")
    total = int(bar.get_attribute("max"))
    old_values = console.page.evaluate("window.progressOldValues")
    values = [int(v) for v in old_values if v is not None] + [int(bar.get_attribute("value"))]
    assert total > 1, (total, values)
    assert values == sorted(values), values
    assert any(0 < value < total for value in values), values
    assert values[-1] == total, values
    points = int(card.get_by_test_id("loss-chart").get_attribute("data-points"))
    assert points >= 2
    expect(card.get_by_test_id("job-status")).to_contain_text("Completed")
    expect(card.get_by_test_id("job-progress-text")).to_contain_text(f"step {total} / {total}")
    metrics = card.get_by_test_id("job-test-metrics")
    expect(metrics).to_be_visible()
    expect(card.get_by_test_id("job-test-accuracy")).to_have_text(re.compile(r"^\d+\.\d%$"))
    final = operator.get(f"/model-init/status/{job['job_name']}").json()
    assert final["status"] == "Completed"
    accuracy = final["job"]["metrics"]["test_accuracy"]
    expect(card.get_by_test_id("job-test-accuracy")).to_have_text(f"{accuracy * 100:.1f}%")
    console.screenshot("console-training.png")
    # It deploys itself: the console then shows it serving.
    version = wait_until_served(operator, job["job_name"])
    expect(console.by("serving-version")).to_have_text(version)


def test_activation_from_the_page_switches_the_served_version(
    open_console: Callable[..., Console],
    live_mesh: RunningMesh,
    two_versions: list[str],
    operator: httpx.Client,
) -> None:
    before = served_version(operator)
    other = next(v for v in two_versions if v != before)
    console = open_console(live_mesh, view="models", token=live_mesh.token("operator"))
    expect(console.by("serving-version")).to_have_text(before)
    console.by(f"activate-{other}").click()
    expect(console.by("models-msg")).to_contain_text(f"{other} is the active version")
    wait_for(lambda: served_version(operator) == other, timeout=120)
    expect(console.by("serving-version")).to_have_text(other)
    expect(console.page.locator("[data-testid=activation-row]").first).to_have_attribute(
        "data-version", other
    )
    row = console.page.locator(f"[data-testid=model-row][data-version='{other}']")
    expect(row).to_have_attribute("data-active", "true")

    # Metrics over time: an evaluation from the page becomes a point of the chart, and
    # the confusion matrix is the active model's.
    console.by("eval-version").select_option(other)
    console.by("evaluate").click()
    expect(console.by("eval-msg")).to_contain_text(f"{other}: test accuracy")
    chart = console.by("eval-chart")
    expect(chart).to_have_attribute("data-version", other)
    expect(chart).not_to_have_attribute("data-points", "0")
    expect(chart.locator("canvas")).to_be_visible()
    expect(console.by("confusion-source")).to_have_text(f"active model {other}")
    expect(console.by("confusion-test")).to_be_visible()
    console.screenshot("console-models.png")

    # Roll back: the version before serves again.
    console.by("rollback").click()
    expect(console.by("models-msg")).to_contain_text(f"{before} is active again")
    wait_for(lambda: served_version(operator) == before, timeout=120)
    expect(console.by("serving-version")).to_have_text(before)


def shadow_report(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/predict/shadow")
    assert response.status_code == 200, response.text
    return response.json()["report"]  # type: ignore[no-any-return]


def shadowed_prediction_ids(mesh: RunningMesh) -> set[str]:
    with sqlite3.connect(mesh.data_dir / "inference" / "predictions.db") as db:
        return {row[0] for row in db.execute("SELECT prediction_id FROM shadow_predictions")}


def test_shadow_evaluation_from_the_page(
    open_console: Callable[..., Console],
    live_mesh: RunningMesh,
    two_versions: list[str],
    operator: httpx.Client,
) -> None:
    active = served_version(operator)
    other = next(v for v in two_versions if v != active)
    console = open_console(live_mesh, view="models")
    expect(console.by("shadow-empty")).to_be_visible()
    expect(console.by("shadow-stop")).to_be_disabled()
    expect(console.by(f"shadow-start-{active}")).to_have_count(0)
    # Without the token: the 401 message, and nothing starts.
    console.by(f"shadow-start-{other}").click()
    message = console.by("shadow-msg")
    expect(message).to_contain_text("Operator token needed")
    expect(message).to_have_attribute("data-status", "401")
    assert shadow_report(operator)["state"] == "none"

    console.sign_in(live_mesh.token("operator"))
    console.by("shadow-duration").select_option("600")
    console.by(f"shadow-start-{other}").click()
    expect(message).to_contain_text(f"{other} shadows live traffic until")
    try:
        report = shadow_report(operator)
        assert report["shadow_version"] == other
        started, ends = (datetime.fromisoformat(report[k]) for k in ("started_at", "ends_at"))
        assert ends - started == timedelta(seconds=600)
        expect(console.by("shadow-state")).to_have_text("running")
        expect(console.by("shadow-version")).to_have_text(other)
        row = console.page.locator(f"[data-testid=model-row][data-version='{other}']")
        expect(row.get_by_test_id("model-shadowing")).to_be_visible()
        expect(console.by("shadow-stop")).to_be_enabled()

        # A prediction from the page: answered by the served version, shadowed by the other,
        # and confirmed, so that both models are scored on it.
        console.view("predict")
        console.by("predict-text").fill("The hinge snapped the first week, shadow check")
        console.by("predict-submit").click()
        expect(console.by("predict-version")).to_have_text(active)
        prediction_id = console.by("predict-id").inner_text()
        console.by("feedback-confirm").click()
        expect(console.by("feedback-msg")).to_contain_text("recorded")
        console.view("models")
        expect(console.by("shadow-shadowed")).to_have_text(re.compile(r"^[1-9]\d*$"))
        assert prediction_id in shadowed_prediction_ids(live_mesh)
        expect(console.by("shadow-agreement")).to_have_text(re.compile(r"^\d{1,3}\.\d%$"))
        expect(console.by("shadow-served")).to_have_text(active)
        expect(console.by("shadow-labelled")).to_have_text(re.compile(r"^[1-9]\d*$"))
        # The served version answered what the user confirmed: it is right on all of them.
        expect(console.by("shadow-accuracy")).to_contain_text(f"served ({active}) 100.0%")
        expect(console.by("shadow-macro-f1")).to_contain_text(f"served ({active})")
        # The page shows the API's report.
        shown = console.by("shadow-agreement")
        wait_for(
            lambda: shown.inner_text() == f"{shadow_report(operator)['agreement'] * 100:.1f}%",
            timeout=30,
        )
        console.by("shadow").scroll_into_view_if_needed()
        console.screenshot("console-shadow.png")

        # One shadow at a time: the API's reason for the 400 is the message.
        console.by(f"shadow-start-{other}").click()
        expect(message).to_contain_text("stop it first")
        expect(message).to_have_attribute("data-status", "400")
        console.by("shadow-stop").click()
        expect(message).to_contain_text(f"Stopped: {other} shadowed")
        expect(console.by("shadow-state")).to_have_text("ended")
        expect(console.by("shadow-ends")).to_contain_text("(stopped)")
        expect(console.by("shadow-stop")).to_be_disabled()
        expect(row.get_by_test_id("model-shadowing")).to_have_count(0)
    finally:
        if shadow_report(operator)["state"] in ("loading", "running"):
            operator.post("/predict/shadow/stop", json={})
    final = shadow_report(operator)
    assert (final["state"], final["end_reason"]) == ("ended", "stopped")


def test_event_feed_is_live_and_shows_text_as_text(
    open_console: Callable[..., Console], live_mesh: RunningMesh, served: str
) -> None:
    console = open_console(live_mesh, view="events")
    expect(console.by("events-live")).to_have_text("live")
    # The recent events were listed (the deploy of the served version among them).
    expect(
        console.page.locator("[data-testid=event-row][data-type='model.activated']").first
    ).to_be_visible()
    # A new event arrives through the stream, without a reload. Its fields carry markup:
    # the page must show them as text.
    markup = '<img src="x" onerror="window.injected = 1"><b>bold</b>'
    published = httpx.post(
        f"{live_mesh.url}/events",
        headers=live_mesh.service_headers,
        json={
            "type": "console.check",
            "subject": "<script>window.injected = 2</script>",
            "message": markup,
            "attributes": {"note": "<i>attribute</i>"},
        },
        timeout=10,
    )
    assert published.status_code == 200, published.text
    row = console.page.locator("[data-testid=event-row][data-type='console.check']")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(markup)
    expect(row).to_contain_text("<script>window.injected = 2</script>")
    expect(row).to_contain_text("note=<i>attribute</i>")
    assert row.locator("img, b, script, i").count() == 0
    assert console.page.evaluate("window.injected") is None
    # The filter keeps the rows of one type prefix.
    console.by("events-filter").fill("console.")
    expect(console.page.locator("[data-testid=event-row]:visible")).to_have_count(1)
    console.by("events-filter").fill("")
    console.screenshot("console-events.png")


def test_no_model_is_a_message(
    open_console: Callable[..., Console], empty_mesh: RunningMesh
) -> None:
    console = open_console(empty_mesh, view="predict")
    expect(console.by("serving-version")).to_have_text("none")
    console.by("predict-text").fill("Is anything serving?")
    console.by("predict-submit").click()
    message = console.by("predict-msg")
    expect(message).to_contain_text("No model is serving yet — bootstrap one")
    expect(message).to_have_attribute("data-status", "503")
    expect(console.by("predict-result")).to_be_hidden()
    console.screenshot("console-no-model.png")
    # The other views say so too, instead of staying blank.
    console.view("models")
    expect(console.by("models-empty")).to_contain_text("No model versions yet")
    expect(console.by("confusion")).to_contain_text("No active model yet")
    console.view("training")
    expect(console.by("live-empty")).to_be_visible()


def test_operator_action_without_the_token_is_a_401_message(
    open_console: Callable[..., Console], empty_mesh: RunningMesh
) -> None:
    console = open_console(empty_mesh, view="training")
    console.by("bootstrap-preset").select_option("tiny")
    console.by("bootstrap-submit").click()
    message = console.by("training-msg")
    expect(message).to_contain_text("Operator token needed")
    expect(message).to_contain_text("Operator token field")
    expect(message).to_have_attribute("data-status", "401")
    console.screenshot("console-token-needed.png")
    # The message points at the field.
    console.by("training-msg-token").click()
    expect(console.by("operator-token")).to_be_focused()
    assert httpx.get(f"{empty_mesh.url}/model-init/jobs").json()["jobs"] == []

    # A token that is not the operator's: 401 again, saying so.
    console.sign_in("not-the-token")
    console.by("bootstrap-submit").click()
    expect(message).to_contain_text("operator token was not accepted")
    console.by("token-forget").click()
    expect(console.by("token-state")).to_have_text("read-only")


def test_403_and_network_errors_are_messages(
    open_console: Callable[..., Console], empty_mesh: RunningMesh
) -> None:
    console = open_console(empty_mesh, view="models")
    # Only a mesh with SENTILOOP_API_KEY answers 403 (an API key on an operator call);
    # the answer is replayed here in the API's error shape.
    denied = {
        "error": "Rollback needs the operator credential",
        "detail": "PERMISSION_DENIED",
        "code": 7,
        "message": "Rollback needs the operator credential",
        "details": [],
    }
    console.page.route(
        "**/models/rollback",
        lambda route: route.fulfill(status=403, json=denied),
    )
    console.by("rollback").click()
    message = console.by("models-msg")
    expect(message).to_contain_text("Not allowed with this token (403)")
    expect(message).to_contain_text("Rollback needs the operator credential")
    # The API unreachable: the panel says so, and the next poll clears it.
    console.page.route("**/feedback/stats", lambda route: route.abort())
    console.view("predict")
    expect(console.by("stats-error")).to_contain_text("Cannot reach the Sentiloop API")
    console.page.unroute("**/feedback/stats")
    expect(console.by("stats-error")).to_be_hidden()
    expect(console.by("stats-total")).to_have_text("0")
