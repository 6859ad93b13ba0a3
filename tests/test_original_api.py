"""The original REST API's contract (../shared/ORIGINAL_API.md), field for field, through
Envoy: every request exactly as the old documentation sends it (run with curl itself, so
content types and empty bodies are what old clients send), every response field at the
top level with its JSON type, the error shape of every error, and /docs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sentiloop.testing import (
    TINY_ENV,
    RunningMesh,
    start_mesh,
    wait_for,
    write_unloadable_artifact,
)
from sentiloop.v1 import model_init_pb2, model_init_pb2_grpc

# The requests of ORIGINAL_API.md, verbatim.
HEALTH = "curl http://HOST:8080/health"
PREDICT = (
    "curl -X POST http://HOST:8080/predict -H 'Content-Type: application/json'"
    ' -d \'{"text": "This is amazing!"}\''
)
FEEDBACK = (
    "curl -X POST http://HOST:8080/feedback -H 'Content-Type: application/json'"
    ' -d \'{"text": "This is amazing!", "model_prediction": "positive", "user_label": "positive"}\''
)
MODELS = "curl http://HOST:8080/models"
EVALUATE = "curl -X POST http://HOST:8080/evaluate"
RETRAIN = "curl -X POST http://HOST:8080/retrain"
BOOTSTRAP = 'curl -X POST "http://HOST:8080/model-init/bootstrap?auto_deploy=true"'
STATUS = "curl http://HOST:8080/model-init/status/JOB_NAME"
DEPLOY = "curl -X POST http://HOST:8080/model-init/deploy/JOB_NAME"
ENDPOINT_STATUS = "curl http://HOST:8080/model-init/endpoint-status"

CHROMIUM = os.environ.get("SENTILOOP_TEST_CHROMIUM", "/usr/bin/chromium")
LABELS = {"positive", "negative", "neutral"}


# ---- JSON types as ORIGINAL_API.md names them


def is_string(value: Any) -> bool:
    return isinstance(value, str)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def is_object(value: Any) -> bool:
    return isinstance(value, dict)


def is_iso8601(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def is_id(value: Any) -> bool:
    # The proto3 JSON mapping prints int64 ids as strings of digits.
    return (isinstance(value, str) and value.isdigit()) or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def one_of(*allowed: str) -> Callable[[Any], bool]:
    return lambda value: value in allowed


def array_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(check(item) for item in value)


def number_or_null(value: Any) -> bool:
    return value is None or is_number(value)


def confidence(value: Any) -> bool:
    return is_number(value) and 0 <= value <= 1


# request -> {field: its JSON type}
CONTRACT: dict[str, dict[str, Callable[[Any], bool]]] = {
    HEALTH: {"status": one_of("ok"), "services": is_object},
    PREDICT: {"label": one_of(*LABELS), "confidence": confidence},
    FEEDBACK: {"message": is_string, "id": is_id},
    MODELS: {"models": array_of(is_object), "count": is_number},
    EVALUATE: {
        "accuracy": is_number,
        "total_samples": is_number,
        "correct_predictions": is_number,
        "feedback_count": is_number,
    },
    RETRAIN: {
        "message": is_string,
        "training_job_name": is_string,
        "test_accuracy": is_number,
        "validation_accuracy": is_number,
        "confusion_matrix": array_of(array_of(is_number)),
        "confusion_matrix_labels": array_of(is_string),
    },
    BOOTSTRAP: {
        "message": is_string,
        "training_job_name": is_string,
        "status": one_of("InProgress"),
        "estimated_time": is_string,
        "auto_deploy": is_bool,
        "note": is_string,
    },
    STATUS: {
        "job_name": is_string,
        "status": one_of("InProgress", "Completed", "Failed", "Stopped"),
        "creation_time": is_iso8601,
    },
    DEPLOY: {
        "message": is_string,
        "endpoint_name": is_string,
        "model_name": is_string,
        "status": is_string,
        "estimated_time": is_string,
    },
    ENDPOINT_STATUS: {
        "endpoint_name": is_string,
        "status": one_of("InService", "Creating", "Updating", "Failed", "NotDeployed"),
        "creation_time": is_iso8601,
        "last_modified_time": is_iso8601,
    },
}
MODEL_FIELDS: dict[str, Callable[[Any], bool]] = {
    "version": is_string,
    "path": is_string,
    "accuracy": number_or_null,
    "is_active": is_bool,
    "source": is_string,
    "endpoint_status": is_string,
}
# Present once the job has ended / completed.
ENDED_JOB_FIELDS: dict[str, Callable[[Any], bool]] = {
    "training_end_time": is_iso8601,
    "model_artifacts": is_string,
}


def mismatches(body: Any, fields: dict[str, Callable[[Any], bool]]) -> list[str]:
    if not isinstance(body, dict):
        return [f"the body is not a JSON object: {body!r}"]
    return [
        f"{name}: missing" if name not in body else f"{name}: wrong type or value {body[name]!r}"
        for name, check in fields.items()
        if name not in body or not check(body[name])
    ]


@dataclass
class Answer:
    status: int
    content_type: str
    body: Any


def curl(mesh: RunningMesh, command: str, job_name: str = "", *extra: str) -> Answer:
    """Runs one of ORIGINAL_API.md's commands as written (HOST and JOB_NAME filled in),
    with the operator credential that the calls changing models now need (the one thing
    an old client adds; tests/test_auth.py shows the public ones answer without it)."""
    args = shlex.split(
        command.replace("HOST:8080", mesh.envoy_address).replace("JOB_NAME", job_name)
    )
    args += ["-H", f"Authorization: Bearer {mesh.token()}"]
    with tempfile.TemporaryDirectory() as tmp:
        headers, body = Path(tmp, "headers"), Path(tmp, "body")
        done = subprocess.run(
            [*args, *extra, "-sS", "-D", str(headers), "-o", str(body), "-w", "%{http_code}"],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        content_type = ""
        for line in headers.read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                content_type = value.strip()
        text = body.read_text()
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text
    return Answer(int(done.stdout), content_type, parsed)


def assert_contract(answer: Answer, command: str) -> dict[str, Any]:
    assert answer.status == 200, (command, answer)
    assert answer.content_type.startswith("application/json"), answer.content_type
    assert mismatches(answer.body, CONTRACT[command]) == [], (command, answer.body)
    body: dict[str, Any] = answer.body
    return body


def assert_error(answer: Answer, status: int) -> dict[str, Any]:
    """Every error: JSON with `error` (a string) and `detail` (a string or object),
    Sentiloop's `code`/`message`/`details` beside them."""
    assert answer.status == status, answer
    assert answer.content_type == "application/json", answer
    assert isinstance(answer.body, dict), answer
    body: dict[str, Any] = answer.body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str | dict) and body["detail"], body
    assert isinstance(body.get("code"), int), body
    assert body.get("message") == body["error"], body
    assert isinstance(body.get("details"), list), body
    for leaked in ("Traceback", "<class", "Exception", "Stream removed"):
        assert leaked not in body["error"], body
    return body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """A mesh of its own: the original bootstrap call names no preset, so the tiny
    preset is the default here."""
    running = start_mesh(
        tmp_path_factory.mktemp("original-api"),
        extra_env=TINY_ENV,
    )
    yield running
    assert running.stop() == 0


def serving(mesh: RunningMesh) -> dict[str, Any]:
    answer = curl(mesh, "curl http://HOST:8080/predict/status")
    assert answer.status == 200, answer
    body: dict[str, Any] = answer.body
    return body


def test_health(mesh: RunningMesh) -> None:
    body = assert_contract(curl(mesh, HEALTH), HEALTH)
    assert body["services"] and all(status == "SERVING" for status in body["services"].values())


def predict_while_no_model_is_deployed_is_503(mesh: RunningMesh) -> None:
    body = assert_error(curl(mesh, PREDICT), 503)
    assert "no model is deployed" in body["error"]
    assert body["detail"] == "UNAVAILABLE"


def predict_when_the_model_cannot_be_loaded_is_500(mesh: RunningMesh) -> None:
    # Complete and safe (the registry checks that), but its weights are garbage.
    broken = write_unloadable_artifact(mesh.data_dir, "broken")
    registered = curl(
        mesh,
        "curl -X POST http://HOST:8080/models -H 'Content-Type: application/json'"
        f' -d \'{{"path": "{broken}", "source": "manual"}}\'',
    )
    assert registered.status == 200, registered
    version = registered.body["model"]["version"]
    activated = curl(mesh, f"curl -X POST http://HOST:8080/models/{version}/activate -d '{{}}'")
    assert activated.status == 200, activated
    wait_for(lambda: serving(mesh)["status"] == "Failed", timeout=30)
    body = assert_error(curl(mesh, PREDICT), 500)
    assert f"{version} could not be loaded" in body["error"]
    assert body["detail"] == "INTERNAL"


def retrain_with_fewer_than_10_feedback_samples_is_400(mesh: RunningMesh) -> None:
    assert_contract(curl(mesh, FEEDBACK), FEEDBACK)
    body = assert_error(curl(mesh, RETRAIN), 400)
    assert "at least 10" in body["error"]
    assert body["detail"] == "FAILED_PRECONDITION"


def test_feedback_sent_with_curls_default_form_content_type(mesh: RunningMesh) -> None:
    command = FEEDBACK.replace(" -H 'Content-Type: application/json'", "")
    assert "-H" not in command
    first = assert_contract(curl(mesh, FEEDBACK), FEEDBACK)
    second = assert_contract(curl(mesh, command), FEEDBACK)
    assert int(second["id"]) == int(first["id"]) + 1
    assert second["feedback"]["text"] == "This is amazing!"


def test_the_original_walkthrough(mesh: RunningMesh) -> None:
    """From an empty mesh, as the original API's users met it: no model (503), a model
    that cannot load (500), too little feedback to retrain (400), then bootstrap, deploy,
    predict, evaluate and retrain. One test, as each step needs the state the one before
    left; the other tests of this module need none of it."""
    predict_while_no_model_is_deployed_is_503(mesh)
    predict_when_the_model_cannot_be_loaded_is_500(mesh)
    retrain_with_fewer_than_10_feedback_samples_is_400(mesh)

    started = assert_contract(curl(mesh, BOOTSTRAP), BOOTSTRAP)
    job_name = started["training_job_name"]
    assert started["auto_deploy"] is True
    assert job_name in started["note"] and "deploy" in started["note"]

    running = assert_contract(curl(mesh, STATUS, job_name), STATUS)
    assert running["job_name"] == job_name

    def ended() -> dict[str, Any] | None:
        body = assert_contract(curl(mesh, STATUS, job_name), STATUS)
        return body if body["status"] != "InProgress" else None

    status = wait_for(ended, timeout=300, interval=1)
    assert status["status"] == "Completed", status
    assert mismatches(status, ENDED_JOB_FIELDS) == [], status
    assert status["model_artifacts"].endswith("model.tar.gz")

    # The auto-deploy serves the new model; deploying it again is the original call.
    wait_for(lambda: serving(mesh)["status"] == "InService", timeout=120)
    deployed = assert_contract(curl(mesh, DEPLOY, job_name), DEPLOY)
    assert deployed["status"] == "InService"
    assert deployed["model_name"] == deployed["model_version"]

    endpoint = assert_contract(curl(mesh, ENDPOINT_STATUS), ENDPOINT_STATUS)
    assert endpoint["status"] == "InService"
    assert endpoint["creation_time"] <= endpoint["last_modified_time"]
    with mesh.operator_channel() as channel:  # the same fields over gRPC
        answer = model_init_pb2_grpc.ModelInitServiceStub(channel).GetEndpointStatus(
            model_init_pb2.GetEndpointStatusRequest(), timeout=10
        )
        assert answer.HasField("creation_time") and answer.HasField("last_modified_time")

    models = assert_contract(curl(mesh, MODELS), MODELS)
    assert models["count"] == len(models["models"]) == 2
    for model in models["models"]:
        assert mismatches(model, MODEL_FIELDS) == [], model
    assert [m["is_active"] for m in models["models"]].count(True) == 1

    predicted = assert_contract(curl(mesh, PREDICT), PREDICT)
    assert predicted["model_version"] == deployed["model_version"]

    evaluated = assert_contract(curl(mesh, EVALUATE), EVALUATE)
    assert evaluated["feedback_count"] >= 1  # the one sent before the 400 above

    for i in range(10):
        command = FEEDBACK.replace("This is amazing!", f"This is amazing, take {i}!")
        assert_contract(curl(mesh, command), FEEDBACK)
    retrained = assert_contract(curl(mesh, RETRAIN), RETRAIN)
    labels = retrained["confusion_matrix_labels"]
    assert sorted(labels) == sorted(LABELS)
    assert [len(row) for row in retrained["confusion_matrix"]] == [len(labels)] * len(labels)


# ---- errors Envoy answers itself, in the same shape


@pytest.mark.parametrize(
    ("command", "status", "says"),
    [
        ("curl http://HOST:8080/no-such-path", 404, "Could not resolve /no-such-path"),
        ("curl -X DELETE http://HOST:8080/models", 404, "Could not resolve /models"),
        ("curl -X POST http://HOST:8080/feedback -d '{\"text\": '", 400, "Unexpected end"),
        ("curl 'http://HOST:8080/feedback?colour=red'", 400, 'Could not find field "colour"'),
    ],
)
def test_envoys_own_errors(mesh: RunningMesh, command: str, status: int, says: str) -> None:
    body = assert_error(curl(mesh, command), status)
    assert says in body["error"]


def test_a_body_over_the_limit_is_413(mesh: RunningMesh, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"text": "x" * (5 * 1024 * 1024)}))
    command = f"curl -X POST http://HOST:8080/feedback --data-binary @{big}"
    body = assert_error(curl(mesh, command), 413)
    assert "the limit is" in body["error"]


def test_an_upstream_timeout_is_504(mesh: RunningMesh, tmp_path: Path) -> None:
    # Envoy honours a client on its own host asking for a timeout. Checking 20,000 rows
    # of an import takes far longer than 1 ms, with or without a model (and, all of them
    # invalid, the import would store nothing if it ran to its end).
    rows = tmp_path / "import.json"
    content = "text,label\n" + "".join(f"row {i},great\n" for i in range(20_000))
    rows.write_text(json.dumps({"train": {"content": content}}))
    command = f"curl -X POST http://HOST:8080/datasets --data-binary @{rows}"
    answer = curl(mesh, command, "", "-H", "x-envoy-upstream-rq-timeout-ms: 1")
    body = assert_error(answer, 504)
    assert body["detail"] == "response_timeout"
    assert body["error"] == "upstream request timeout"


def test_no_healthy_upstream_is_503(mesh: RunningMesh) -> None:
    pid = mesh.pid("notification")
    os.kill(pid, signal.SIGSTOP)  # alive for the supervisor, failing Envoy's health checks
    try:

        def refused() -> Answer | None:
            # A call routed before the health check noticed would wait for the process.
            try:
                answer = curl(mesh, "curl http://HOST:8080/events", "", "--max-time", "3")
            except subprocess.CalledProcessError:
                return None
            return answer if answer.status == 503 else None

        body = assert_error(wait_for(refused, timeout=20), 503)
        assert body["detail"] == "no_healthy_upstream"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: curl(mesh, "curl http://HOST:8080/events").status == 200, timeout=20)


def test_docs_render_a_swagger_ui(mesh: RunningMesh) -> None:
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: run `make system-deps`"
    page = curl(mesh, "curl http://HOST:8080/docs")
    assert page.status == 200 and page.content_type.startswith("text/html"), page
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"{mesh.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # Rendered operations, not just the page's scaffolding.
    assert "opblock" in dom, dom[:2000]
    for path in ("/predict", "/feedback", "/model-init/endpoint-status"):
        assert f'data-path="{path}"' in dom, path


def test_grpc_clients_see_the_same_top_level_fields(mesh: RunningMesh) -> None:
    from sentiloop.v1 import feedback_pb2, feedback_pb2_grpc

    with mesh.operator_channel() as channel:
        feedback = feedback_pb2_grpc.FeedbackServiceStub(channel).SubmitFeedback(
            feedback_pb2.SubmitFeedbackRequest(text="Works fine", user_label="positive"),
            timeout=10,
        )
        assert feedback.id == feedback.feedback.id > 0
        model_init = model_init_pb2_grpc.ModelInitServiceStub(channel)

        def completed_job() -> str:
            jobs = model_init.ListTrainingJobs(model_init_pb2.ListTrainingJobsRequest(), timeout=10)
            return next((j.job_name for j in jobs.jobs if j.status == "Completed"), "")

        if not completed_job():  # the walk-through has not run yet: train one, not deployed
            if not any(
                j.status == "InProgress"
                for j in model_init.ListTrainingJobs(
                    model_init_pb2.ListTrainingJobsRequest(), timeout=10
                ).jobs
            ):
                model_init.Bootstrap(model_init_pb2.BootstrapRequest(), timeout=30)
            wait_for(completed_job, timeout=300, interval=1)
        status = model_init.GetTrainingStatus(
            model_init_pb2.GetTrainingStatusRequest(job_name=completed_job()), timeout=10
        )
        assert (status.job_name, status.status) == (status.job.job_name, status.job.status)
        assert status.model_artifacts == status.job.model_artifacts != ""
        assert status.training_end_time == status.job.end_time
        assert status.creation_time == status.job.creation_time
