"""The SageMaker backends (training jobs, the endpoint, sagemaker-runtime predictions, the
model package mirror) against moto's server; S3 (the object store) on SeaweedFS, a real
S3-compatible server.

moto accepts the requests and keeps what it was sent, so most checks read the resources
back. Where moto falls short the request itself is checked (recorded through botocore's
event hooks): it reports a training job Completed at once and replaces its metric
definitions, and it does not implement update_endpoint / stop_training_job (HTTP 500).
The other job and endpoint states come from recorded SageMaker responses
(tests/fixtures/sagemaker/*.json, validated against the API model by botocore's Stubber)."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.stub import Stubber
from moto.server import ThreadedMotoServer
from seaweed import SeaweedS3, running_seaweed

from sentiloop.aws import config as sagemaker_module
from sentiloop.aws.config import INFERENCE_ENVIRONMENT, SageMakerConfig
from sentiloop.aws.endpoint import SageMakerEndpoint
from sentiloop.aws.model_packages import ModelPackageMirror, approval_status
from sentiloop.aws.training import SageMakerTrainingBackend
from sentiloop.core.config import load_settings
from sentiloop.core.errors import InvalidArgument, Unavailable
from sentiloop.core.objectstore import LocalObjectStore
from sentiloop.core.s3store import S3ObjectStore
from sentiloop.core.scripts import load_script, scripts_dir
from sentiloop.inference.engine import PredictionLog, Predictor, check_texts
from sentiloop.inference.sagemaker_runtime import SageMakerPredictor, serving_state
from sentiloop.model_init.backends import TrainingEvent, artifact_key
from sentiloop.model_init.jobs import JobStore, TrainingJob
from sentiloop.model_init.manager import EndpointStatus, ModelInit, NewTraining
from sentiloop.testing import free_port, tarball

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sagemaker"
REGION = "us-east-1"
BUCKET = "sentiloop-test"
PREFIX = "p"
ROLE = "arn:aws:iam::123456789012:role/sentiloop-sagemaker"
TRAINING_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:"
    "2.7.1-transformers4.55.0-gpu-py312-cu124-ubuntu22.04"
)
INFERENCE_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:"
    "2.6.0-transformers4.51.3-cpu-py312-ubuntu22.04"
)
# No retries: moto's 500s and the faked errors surface at once.
NO_RETRIES = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def config(**overrides: Any) -> SageMakerConfig:
    values: dict[str, Any] = {
        "role_arn": ROLE,
        "training_image": TRAINING_IMAGE,
        "inference_image": INFERENCE_IMAGE,
        "poll_seconds": 0.01,
    }
    return SageMakerConfig(**(values | overrides))


# --------------------------------------------------------------------------- the object store


# --------------------------------------------------------------------------- moto and clients


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto keeps its state in the test process: start from none, whatever ran before.
    httpx.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=10).raise_for_status()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass
class Aws:
    url: str
    session: boto3.session.Session
    sagemaker: Any
    runtime: Any
    s3: Any
    store: Any
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def client(self, service: str, url: str | None = None) -> Any:
        return self.session.client(service, endpoint_url=url or self.url, config=NO_RETRIES)

    def requests(self, operation: str) -> list[dict[str, Any]]:
        """What was asked of ``operation`` (as the caller passed it), oldest first."""
        return [params for name, params in self.calls if name == operation]

    def queue_results(self, *results: dict[str, Any]) -> None:
        """Answers for sagemaker-runtime invoke_endpoint (moto's static results API)."""
        request = urllib.request.Request(
            f"{self.url}/moto-api/static/sagemaker/endpoint-results",
            data=json.dumps({"region": REGION, "results": list(results)}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 201


def record_calls(client: Any, calls: list[tuple[str, dict[str, Any]]]) -> None:
    def record(params: dict[str, Any], model: Any, **kwargs: Any) -> None:
        calls.append((model.name, copy.deepcopy(params)))

    client.meta.events.register("before-parameter-build", record)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._body


def answer_with(
    client: Any,
    operation: str,
    status: int = 200,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Answers ``operation`` (e.g. "UpdateEndpoint") without sending it: for what moto
    lacks, and for errors moto does not produce."""
    service = client.meta.service_model.service_id.hyphenize()
    content = json.dumps(body or {}).encode()

    def reply(request: Any, **kwargs: Any) -> AWSResponse:
        all_headers = {"Content-Type": "application/x-amz-json-1.1", **(headers or {})}
        return AWSResponse(request.url, status, all_headers, _Raw(content))

    client.meta.events.register(f"before-send.{service}.{operation}", reply)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """S3 is a real S3-compatible server; moto serves only SageMaker."""
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def aws(moto_url: str, seaweed: SeaweedS3) -> Aws:
    urllib.request.urlopen(
        urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=5
    ).close()
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    calls: list[tuple[str, dict[str, Any]]] = []
    clients = {
        name: session.client(name, endpoint_url=moto_url, config=NO_RETRIES)
        for name in ("sagemaker", "sagemaker-runtime")
    }
    record_calls(clients["sagemaker"], calls)
    record_calls(clients["sagemaker-runtime"], calls)
    s3 = seaweed.client()
    for key in seaweed.keys(BUCKET):  # each test starts with an empty bucket
        s3.delete_object(Bucket=BUCKET, Key=key)
    return Aws(
        url=moto_url,
        session=session,
        sagemaker=clients["sagemaker"],
        runtime=clients["sagemaker-runtime"],
        s3=s3,
        store=S3ObjectStore(s3, BUCKET, PREFIX),
        calls=calls,
    )


def new_job(name: str, **overrides: Any) -> TrainingJob:
    values: dict[str, Any] = {
        "name": name,
        "status": "InProgress",
        "backend": "sagemaker",
        "created_at": datetime.now(UTC),
        "channels": {
            channel: f"datasets/amazon/abc123/{channel}/"
            for channel in ("train", "validation", "test")
        },
        "hyperparameters": {"preset": "tiny", "seed": "13"},
    }
    return TrainingJob(**(values | overrides))


def run_job(backend: SageMakerTrainingBackend, job: TrainingJob) -> list[TrainingEvent]:
    events: list[TrainingEvent] = []

    async def report(event: TrainingEvent) -> None:
        events.append(event)

    asyncio.run(asyncio.wait_for(backend.run(job, report), 10))
    return events


# --------------------------------------------------------------------------- configuration


def sagemaker_config(environ: dict[str, str]) -> SageMakerConfig:
    return SageMakerConfig.from_settings(load_settings(environ))


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    required = {
        "SENTILOOP_SAGEMAKER_ROLE_ARN": ROLE,
        "SENTILOOP_SAGEMAKER_TRAINING_IMAGE": TRAINING_IMAGE,
        "SENTILOOP_SAGEMAKER_INFERENCE_IMAGE": INFERENCE_IMAGE,
    }
    defaults = sagemaker_config(required)
    assert defaults == SageMakerConfig(
        role_arn=ROLE,
        training_image=TRAINING_IMAGE,
        inference_image=INFERENCE_IMAGE,
        instance_type="ml.g5.xlarge",
        inference_instance_type="ml.m5.large",
        max_runtime_seconds=3600,
        endpoint_name="sentiloop",
        model_package_group="sentiloop",
        poll_seconds=15.0,
    )
    custom = sagemaker_config(
        required
        | {
            "SENTILOOP_SAGEMAKER_INSTANCE_TYPE": "ml.g4dn.xlarge",
            "SENTILOOP_SAGEMAKER_INFERENCE_INSTANCE_TYPE": "ml.c5.xlarge",
            "SENTILOOP_SAGEMAKER_MAX_RUNTIME_SECONDS": "7200",
            "SENTILOOP_SAGEMAKER_ENDPOINT_NAME": "reviews",
            "SENTILOOP_SAGEMAKER_MODEL_PACKAGE_GROUP": "reviews-models",
            "SENTILOOP_SAGEMAKER_POLL_SECONDS": "0.5",
        }
    )
    assert (custom.instance_type, custom.inference_instance_type) == (
        "ml.g4dn.xlarge",
        "ml.c5.xlarge",
    )
    assert (custom.max_runtime_seconds, custom.poll_seconds) == (7200, 0.5)
    assert (custom.endpoint_name, custom.model_package_group) == ("reviews", "reviews-models")

    # Without the optional sagemaker SDK, nothing fills in the images.
    monkeypatch.setattr(sagemaker_module, "sdk_image_uri", lambda *args: "")
    with pytest.raises(SystemExit) as missing:
        sagemaker_config({})
    message = str(missing.value)
    assert message.startswith("configuration error: ")
    for name in ("ROLE_ARN", "TRAINING_IMAGE", "INFERENCE_IMAGE"):
        assert f"SENTILOOP_SAGEMAKER_{name}" in message
    # Malformed numbers stop the settings from loading at all, all named together ...
    with pytest.raises(SystemExit) as malformed:
        sagemaker_config(
            required
            | {
                "SENTILOOP_SAGEMAKER_MAX_RUNTIME_SECONDS": "an hour",
                "SENTILOOP_SAGEMAKER_POLL_SECONDS": "0",
            }
        )
    for name in ("MAX_RUNTIME_SECONDS", "POLL_SECONDS"):
        assert f"SENTILOOP_SAGEMAKER_{name}" in str(malformed.value)
    # ... and what only a SageMaker backend needs is checked when one is configured.
    with pytest.raises(SystemExit) as wrong:
        sagemaker_config(
            required
            | {
                "SENTILOOP_SAGEMAKER_ROLE_ARN": "sentiloop-role",
                "SENTILOOP_SAGEMAKER_ENDPOINT_NAME": "not_valid",
                "SENTILOOP_SAGEMAKER_INSTANCE_TYPE": "g5.xlarge",
            }
        )
    message = str(wrong.value)
    for name in ("ROLE_ARN", "ENDPOINT_NAME", "INSTANCE"):
        assert f"SENTILOOP_SAGEMAKER_{name}" in message
    # The optional SDK, when it answers, makes the image variables optional.
    monkeypatch.setattr(sagemaker_module, "sdk_image_uri", lambda scope, *args: f"sdk/{scope}")
    resolved = sagemaker_config({"SENTILOOP_SAGEMAKER_ROLE_ARN": ROLE})
    assert (resolved.training_image, resolved.inference_image) == ("sdk/training", "sdk/inference")


def test_endpoint_instance_settings() -> None:
    required = {
        "SENTILOOP_SAGEMAKER_ROLE_ARN": ROLE,
        "SENTILOOP_SAGEMAKER_TRAINING_IMAGE": TRAINING_IMAGE,
        "SENTILOOP_SAGEMAKER_INFERENCE_IMAGE": INFERENCE_IMAGE,
    }
    defaults = sagemaker_config(required)
    assert (defaults.endpoint_min_instances, defaults.endpoint_max_instances) == (1, 1)
    assert not defaults.autoscaled
    scaled = sagemaker_config(
        required
        | {
            "SENTILOOP_SAGEMAKER_ENDPOINT_MIN_INSTANCES": "2",
            "SENTILOOP_SAGEMAKER_ENDPOINT_MAX_INSTANCES": "5",
            "SENTILOOP_SAGEMAKER_ENDPOINT_INVOCATIONS_PER_INSTANCE": "300",
        }
    )
    assert (scaled.endpoint_min_instances, scaled.endpoint_max_instances) == (2, 5)
    assert scaled.invocations_per_instance == 300.0 and scaled.autoscaled
    with pytest.raises(SystemExit) as inverted:
        load_settings(
            {
                "SENTILOOP_SAGEMAKER_ENDPOINT_MIN_INSTANCES": "3",
                "SENTILOOP_SAGEMAKER_ENDPOINT_MAX_INSTANCES": "2",
            }
        )
    assert str(inverted.value) == (
        "configuration error: SENTILOOP_SAGEMAKER_ENDPOINT_MAX_INSTANCES=2 is below"
        " SENTILOOP_SAGEMAKER_ENDPOINT_MIN_INSTANCES=3"
    )
    with pytest.raises(SystemExit) as zero:
        load_settings({"SENTILOOP_SAGEMAKER_ENDPOINT_MIN_INSTANCES": "0"})
    assert "SENTILOOP_SAGEMAKER_ENDPOINT_MIN_INSTANCES='0'" in str(zero.value)


# --------------------------------------------------------------------------- training jobs


def put_dataset(store: Any) -> None:
    for channel in ("train", "validation", "test"):
        store.put_bytes(
            f"datasets/amazon/abc123/{channel}/{channel}.csv",
            b"text,label\nGreat phone,positive\nAwful,negative\n",
        )


def test_training_job_request_and_result(aws: Aws) -> None:
    store = aws.store
    put_dataset(store)
    init = store.put_bytes("models/earlier-job/output/model.tar.gz", b"an earlier model")
    job = new_job(
        "sentiloop-retraining-20250304-100000-ab12",
        hyperparameters={"preset": "tiny", "seed": "13", "init_model_dir": init},
    )
    # What train.py leaves in SM_OUTPUT_DATA_DIR, as SageMaker uploads it (moto does not).
    metrics = {"test": {"accuracy": 0.8, "macro_f1": 0.7}, "train_loss": 0.5}
    store.put_bytes(
        f"models/{job.name}/output/output.tar.gz",
        tarball({"metrics.json": json.dumps(metrics).encode()}),
    )
    backend = SageMakerTrainingBackend(store, config(), aws.sagemaker)
    events = run_job(backend, job)

    assert events[0] == TrainingEvent("status", status="Starting")
    assert events[-1] == TrainingEvent(
        "completed", artifact=store.uri(artifact_key(job.name)), metrics=metrics
    )
    described = aws.sagemaker.describe_training_job(TrainingJobName=job.name)
    assert described["AlgorithmSpecification"]["TrainingImage"] == TRAINING_IMAGE
    assert described["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert described["RoleArn"] == ROLE
    code = f"s3://{BUCKET}/{PREFIX}/code/{job.name}/sourcedir.tar.gz"
    assert {k: json.loads(v) for k, v in described["HyperParameters"].items()} == {
        "preset": "tiny",
        "seed": "13",
        "init_model_dir": "/opt/ml/input/data/init",
        "sagemaker_program": "train.py",
        "sagemaker_submit_directory": code,
        "sagemaker_region": REGION,
    }
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in described["InputDataConfig"]
    }
    assert {name: source["S3Uri"] for name, source in channels.items()} == {
        "train": f"s3://{BUCKET}/{PREFIX}/datasets/amazon/abc123/train/",
        "validation": f"s3://{BUCKET}/{PREFIX}/datasets/amazon/abc123/validation/",
        "test": f"s3://{BUCKET}/{PREFIX}/datasets/amazon/abc123/test/",
        "init": f"s3://{BUCKET}/{PREFIX}/models/earlier-job/output/model.tar.gz",
    }
    assert {source["S3DataType"] for source in channels.values()} == {"S3Prefix"}
    assert described["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/{PREFIX}/models"
    assert described["ModelArtifacts"]["S3ModelArtifacts"] == store.uri(artifact_key(job.name))
    assert described["ResourceConfig"] == {
        "InstanceType": "ml.g5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 30,
    }
    assert described["StoppingCondition"]["MaxRuntimeInSeconds"] == 3600
    # moto replaces the metric definitions with its own: check what was sent.
    [request] = aws.requests("CreateTrainingJob")
    definitions = request["AlgorithmSpecification"]["MetricDefinitions"]
    assert definitions == load_script("train").METRIC_DEFINITIONS
    assert {d["Name"] for d in definitions} >= {"test_accuracy", "test_macro_f1", "loss"}

    # The code SageMaker runs: the very scripts, at the root of sourcedir.tar.gz, and the
    # requirements its container installs first (onnx and onnxruntime for the export).
    assert store.uri(backend.code_key(job.name)) == code
    archive = store.get_bytes(backend.code_key(job.name))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        contents = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert contents == {
        "train.py": (scripts_dir() / "train.py").read_bytes(),
        "inference.py": (scripts_dir() / "inference.py").read_bytes(),
        "requirements.txt": (scripts_dir() / "requirements.txt").read_bytes(),
    }


def test_training_job_after_a_restart_attaches_to_the_existing_job(aws: Aws) -> None:
    put_dataset(aws.store)
    backend = SageMakerTrainingBackend(aws.store, config(), aws.sagemaker)
    job = new_job("sentiloop-bootstrap-20250304-100000-ab12")
    assert run_job(backend, job)[-1].kind == "completed"
    # SageMaker refuses a second job of that name (moto would silently replace it).
    answer_with(
        aws.sagemaker,
        "CreateTrainingJob",
        400,
        {"__type": "ResourceInUse", "message": "Training job names must be unique within an"
         " AWS account and region, and a training job with this name already exists"},
    )  # fmt: skip
    events = run_job(backend, job)
    assert events[-1].kind == "completed"
    assert events[-1].artifact == aws.store.uri(artifact_key(job.name))
    assert len(aws.requests("CreateTrainingJob")) == 2


def test_training_job_that_cannot_start(aws: Aws) -> None:
    put_dataset(aws.store)
    backend = SageMakerTrainingBackend(aws.store, config(), aws.sagemaker)
    answer_with(
        aws.sagemaker,
        "CreateTrainingJob",
        400,
        {"__type": "ValidationException", "message": "Could not assume role " + ROLE},
    )
    [*_, failed] = run_job(backend, new_job("sentiloop-bootstrap-1"))
    assert failed.kind == "failed"
    assert "could not start the job" in failed.reason and "Could not assume role" in failed.reason
    outside = new_job(
        "sentiloop-bootstrap-2", hyperparameters={"init_model_dir": "/srv/models/model.tar.gz"}
    )
    [*_, failed] = run_job(backend, outside)
    assert failed.kind == "failed" and "/srv/models/model.tar.gz" in failed.reason


def test_stop_training_job(aws: Aws) -> None:
    backend = SageMakerTrainingBackend(aws.store, config(), aws.sagemaker)
    # moto does not implement StopTrainingJob (HTTP 500): what SageMaker would not do
    # either surfaces as Unavailable.
    with pytest.raises(Unavailable, match="could not stop"):
        asyncio.run(backend.stop("sentiloop-bootstrap-1"))
    answer_with(aws.sagemaker, "StopTrainingJob")
    asyncio.run(backend.stop("sentiloop-bootstrap-1"))
    assert aws.requests("StopTrainingJob")[-1] == {"TrainingJobName": "sentiloop-bootstrap-1"}


class _Registry:
    async def register(self, job: TrainingJob, gate: dict[str, Any]) -> str:
        raise AssertionError("not deployed")

    async def activate(self, version: str, reason: str) -> None:
        raise AssertionError("not deployed")


FINAL_METRICS = {
    "validation": {"accuracy": 0.801, "macro_f1": 0.712},
    "test": {"accuracy": 0.79, "macro_f1": 0.7},
    "train_loss": 0.55,
}


@pytest.mark.parametrize(
    ("responses", "status", "secondary", "reason", "final_metrics"),
    [
        (
            ["training_starting", "training_training", "training_completed"],
            "Completed",
            ["Starting", "Downloading", "Training", "Uploading", "Completed"],
            "",
            FINAL_METRICS,
        ),
        (
            ["training_starting", "training_training", "training_failed"],
            "Failed",
            ["Starting", "Downloading", "Training", "Failed"],
            fixture("training_failed")["FailureReason"],
            {},
        ),
        (
            ["training_training", "training_stopped"],
            "Stopped",
            ["Starting", "Downloading", "Training", "Stopping", "Stopped"],
            "stopped on request",
            {},
        ),
        (
            ["training_training", "training_max_runtime"],
            "Failed",
            ["Starting", "Downloading", "Training", "MaxRuntimeExceeded"],
            "the job ran past its maximum runtime (600 s) and was stopped",
            {},
        ),
    ],
    ids=["completed", "failed", "stopped", "max-runtime"],
)
def test_training_status_mapping(
    aws: Aws,
    tmp_path: Path,
    responses: list[str],
    status: str,
    secondary: list[str],
    reason: str,
    final_metrics: dict[str, Any],
) -> None:
    """Recorded describe_training_job answers through the backend into ModelInit's jobs;
    no output.tar.gz, so a completed job's metrics come from FinalMetricDataList."""
    client = aws.session.client("sagemaker", endpoint_url="http://127.0.0.1:9")
    events: list[TrainingEvent] = []
    backend = SageMakerTrainingBackend(aws.store, config(), client)

    class Recording:
        name = "sagemaker"

        async def run(self, job: TrainingJob, report: Any) -> None:
            async def both(event: TrainingEvent) -> None:
                events.append(event)
                await report(event)

            await backend.run(job, both)

        async def stop(self, job_name: str) -> None:
            await backend.stop(job_name)

    async def scenario() -> TrainingJob:
        jobs = JobStore(tmp_path / "jobs.db")
        manager = ModelInit(jobs, Recording(), _Registry(), SageMakerEndpoint(config(), client))
        started = await manager.start_training(
            NewTraining(
                "bootstrap",
                {"train": "datasets/a/train/", "validation": "datasets/a/validation/"},
                "abc123",
                {"preset": "tiny"},
                "tiny",
                False,
            )
        )
        deadline = time.monotonic() + 10
        while not (job := await manager.get(started.name)).done:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await manager.shutdown()
        jobs.close()
        return job

    with Stubber(client) as stubber:
        stubber.add_response("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:x"})
        for name in responses:
            stubber.add_response("describe_training_job", fixture(name))
        job = asyncio.run(scenario())
        stubber.assert_no_pending_responses()

    assert job.status == status and job.secondary_status == status
    assert job.failure_reason == reason
    assert job.final_metrics == final_metrics
    seen = [e.status for e in events if e.kind == "status"]
    assert seen == ["Starting", *secondary]
    # SageMaker's latest metric values, as they came
    losses = [
        m["Value"]
        for name in responses
        for m in fixture(name).get("FinalMetricDataList", [])
        if m["MetricName"] == "loss"
    ]
    assert job.metrics["loss"] == losses[-1]
    if status == "Completed":
        assert job.artifact == fixture("training_completed")["ModelArtifacts"]["S3ModelArtifacts"]
        assert job.metrics["test_macro_f1"] == 0.7


# --------------------------------------------------------------------------- the endpoint


def test_endpoint_deploy_then_update(aws: Aws) -> None:
    endpoint = SageMakerEndpoint(config(), aws.sagemaker, settle_timeout=5)
    assert endpoint.name == "sentiloop"
    assert asyncio.run(endpoint.status()) == EndpointStatus("NotDeployed")
    v1 = aws.store.uri(artifact_key("job-1"))
    asyncio.run(endpoint.deploy("v1", v1))

    names = endpoint.names("v1", v1)
    assert names.model.startswith("sentiloop-v1-") and names.variant == "model-v1"
    model = aws.sagemaker.describe_model(ModelName=names.model)
    assert model["PrimaryContainer"]["Image"] == INFERENCE_IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == v1
    assert model["PrimaryContainer"]["Environment"] == {
        **INFERENCE_ENVIRONMENT,
        "SENTILOOP_INFERENCE_ENGINE": "auto",  # the engine choice reaches the endpoint too
    }
    assert INFERENCE_ENVIRONMENT["SAGEMAKER_PROGRAM"] == "inference.py"
    assert INFERENCE_ENVIRONMENT["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert model["ExecutionRoleArn"] == ROLE
    endpoint_config = aws.sagemaker.describe_endpoint_config(
        EndpointConfigName=names.endpoint_config
    )
    [variant] = endpoint_config["ProductionVariants"]
    assert variant["VariantName"] == "model-v1" and variant["ModelName"] == names.model
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 1)
    tags = aws.sagemaker.list_tags(ResourceArn=endpoint_config["EndpointConfigArn"])["Tags"]
    assert {"Key": "sentiloop:model-version", "Value": "v1"} in tags
    described = aws.sagemaker.describe_endpoint(EndpointName="sentiloop")
    assert described["EndpointConfigName"] == names.endpoint_config
    assert described["EndpointStatus"] == "InService"
    assert asyncio.run(endpoint.status()) == EndpointStatus("InService", "v1")
    assert asyncio.run(endpoint.wait_in_service("v1", 5)) == EndpointStatus("InService", "v1")

    asyncio.run(endpoint.deploy("v1", v1))  # already served: nothing to change
    assert aws.requests("UpdateEndpoint") == [] and len(aws.requests("CreateEndpoint")) == 1

    # The second version updates the endpoint. moto has no UpdateEndpoint (HTTP 500)...
    v2 = aws.store.uri(artifact_key("job-2"))
    with pytest.raises(Unavailable, match="deploying v2"):
        asyncio.run(endpoint.deploy("v2", v2))
    # ...so it is answered here, and the request checked.
    answer_with(aws.sagemaker, "UpdateEndpoint", body={"EndpointArn": described["EndpointArn"]})
    asyncio.run(endpoint.deploy("v2", v2))
    names2 = endpoint.names("v2", v2)
    assert aws.requests("UpdateEndpoint")[-1] == {
        "EndpointName": "sentiloop",
        "EndpointConfigName": names2.endpoint_config,
    }
    model2 = aws.sagemaker.describe_model(ModelName=names2.model)
    assert model2["PrimaryContainer"]["ModelDataUrl"] == v2
    [variant2] = aws.sagemaker.describe_endpoint_config(EndpointConfigName=names2.endpoint_config)[
        "ProductionVariants"
    ]
    assert variant2["VariantName"] == "model-v2" and variant2["ModelName"] == names2.model
    # moto never applies the update: the wait ends at its timeout with what is served.
    assert asyncio.run(endpoint.wait_in_service("v2", 0.2)) == EndpointStatus("InService", "v1")


def scalable_targets(autoscaling: Any) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker"
    )["ScalableTargets"]
    return targets


def scaling_policies(autoscaling: Any) -> list[dict[str, Any]]:
    policies: list[dict[str, Any]] = autoscaling.describe_scaling_policies(
        ServiceNamespace="sagemaker"
    )["ScalingPolicies"]
    return policies


def test_endpoint_autoscales_between_the_minimum_and_the_maximum(aws: Aws) -> None:
    autoscaling = aws.client("application-autoscaling")
    endpoint = SageMakerEndpoint(
        config(endpoint_max_instances=3, invocations_per_instance=250.0),
        aws.sagemaker,
        settle_timeout=5,
        autoscaling_client=autoscaling,
    )
    v1 = aws.store.uri(artifact_key("job-1"))
    asyncio.run(endpoint.deploy("v1", v1))
    assert scalable_targets(autoscaling) == []  # only once the endpoint is InService
    assert asyncio.run(endpoint.wait_in_service("v1", 5)) == EndpointStatus("InService", "v1")

    [variant] = aws.sagemaker.describe_endpoint_config(
        EndpointConfigName=endpoint.names("v1", v1).endpoint_config
    )["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 1  # the minimum
    [target] = scalable_targets(autoscaling)
    assert target["ResourceId"] == "endpoint/sentiloop/variant/model-v1"
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    [policy] = scaling_policies(autoscaling)
    assert policy["ResourceId"] == "endpoint/sentiloop/variant/model-v1"
    assert policy["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 250.0,
        "PredefinedMetricSpecification": {
            "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
        },
        "ScaleInCooldown": 300,
        "ScaleOutCooldown": 60,
    }
    # Waiting again (a redeploy of the served version, a restart) registers it again.
    assert asyncio.run(endpoint.wait_in_service("v1", 5)) == EndpointStatus("InService", "v1")
    assert len(scalable_targets(autoscaling)) == 1

    # An update first takes the serving variant off autoscaling (moto has no
    # UpdateEndpoint: answered here).
    described = aws.sagemaker.describe_endpoint(EndpointName="sentiloop")
    answer_with(aws.sagemaker, "UpdateEndpoint", body={"EndpointArn": described["EndpointArn"]})
    asyncio.run(endpoint.deploy("v2", aws.store.uri(artifact_key("job-2"))))
    assert len(aws.requests("UpdateEndpoint")) == 1
    assert scalable_targets(autoscaling) == []
    assert scaling_policies(autoscaling) == []


def test_endpoint_without_autoscaling_registers_none(aws: Aws) -> None:
    autoscaling = aws.client("application-autoscaling")
    v1 = aws.store.uri(artifact_key("job-1"))
    scaled = SageMakerEndpoint(
        config(endpoint_max_instances=3), aws.sagemaker, autoscaling_client=autoscaling
    )
    asyncio.run(scaled.deploy("v1", v1))
    asyncio.run(scaled.wait_in_service("v1", 5))
    assert len(scalable_targets(autoscaling)) == 1

    # Minimum == maximum: a fixed instance count, part of the configuration, and the
    # autoscaling a configuration before left is taken away.
    fixed = SageMakerEndpoint(
        config(endpoint_min_instances=2, endpoint_max_instances=2),
        aws.sagemaker,
        settle_timeout=5,
        autoscaling_client=autoscaling,
    )
    assert fixed.names("v1", v1) != scaled.names("v1", v1)
    answer_with(aws.sagemaker, "UpdateEndpoint", body={"EndpointArn": "arn:x"})
    asyncio.run(fixed.deploy("v1", v1))
    [variant] = aws.sagemaker.describe_endpoint_config(
        EndpointConfigName=fixed.names("v1", v1).endpoint_config
    )["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 2
    assert scalable_targets(autoscaling) == []
    assert asyncio.run(fixed.wait_in_service("v1", 5)) == EndpointStatus("InService", "v1")
    assert scalable_targets(autoscaling) == []
    assert scaling_policies(autoscaling) == []


def test_endpoint_serves_when_autoscaling_fails(aws: Aws, caplog: pytest.LogCaptureFixture) -> None:
    nowhere = aws.client("application-autoscaling", f"http://127.0.0.1:{free_port()}")
    endpoint = SageMakerEndpoint(
        config(endpoint_max_instances=3),
        aws.sagemaker,
        settle_timeout=5,
        autoscaling_client=nowhere,
    )
    v1 = aws.store.uri(artifact_key("job-1"))
    asyncio.run(endpoint.deploy("v1", v1))
    assert asyncio.run(endpoint.wait_in_service("v1", 5)) == EndpointStatus("InService", "v1")
    assert "autoscaling its variant failed" in caplog.text
    # Nor does it stop an update.
    answer_with(aws.sagemaker, "UpdateEndpoint", body={"EndpointArn": "arn:x"})
    asyncio.run(endpoint.deploy("v2", aws.store.uri(artifact_key("job-2"))))
    assert len(aws.requests("UpdateEndpoint")) == 1
    assert "taking the serving variant off autoscaling failed" in caplog.text


def stub_describe(stubber: Stubber, endpoint: str, *configs: str) -> None:
    stubber.add_response("describe_endpoint", fixture(endpoint), {"EndpointName": "sentiloop"})
    for version in configs:
        stubber.add_response("describe_endpoint_config", fixture(f"endpoint_config_{version}"))
        stubber.add_response("list_tags", fixture(f"list_tags_{version}"))


FAILED_REASON = fixture("endpoint_failed")["FailureReason"]
ROLLED_BACK_REASON = fixture("endpoint_update_rolled_back")["FailureReason"]
Status = EndpointStatus


@pytest.mark.parametrize(
    ("recorded", "configs", "status", "state"),
    [
        ("endpoint_creating", ["v1"], Status("Creating"), ("Loading", "", "v1")),
        ("endpoint_updating", ["v1", "v2"], Status("Updating", "v1"), ("Loading", "v1", "v2")),
        ("endpoint_in_service", ["v1"], Status("InService", "v1"), ("InService", "v1", "v1")),
        ("endpoint_failed", ["v1"], Status("Failed", "v1", FAILED_REASON), ("Failed", "", "v1")),
        (
            "endpoint_update_rolled_back",
            ["v1"],
            Status("InService", "v1", ROLLED_BACK_REASON),
            ("InService", "v1", "v1"),
        ),
    ],
    ids=["creating", "updating", "in-service", "failed", "rolled-back"],
)  # fmt: skip
def test_endpoint_status_mapping(
    recorded: str, configs: list[str], status: EndpointStatus, state: tuple[str, str, str]
) -> None:
    client = boto3.session.Session(
        aws_access_key_id="x", aws_secret_access_key="x", region_name=REGION
    ).client("sagemaker")
    with Stubber(client) as stubber:
        stub_describe(stubber, recorded, *configs)
        endpoint = SageMakerEndpoint(config(), client)
        assert asyncio.run(endpoint.status()) == status
        stub_describe(stubber, recorded)  # configurations are cached
        view = endpoint.describe()
        stubber.assert_no_pending_responses()
    serving = serving_state(view)
    assert (serving.status, serving.model_version, serving.target_version) == state
    if recorded == "endpoint_updating":
        assert view.variants == {"model-v1": "v1", "model-v2": "v2"}


def test_endpoint_wait_reports_a_rolled_back_update_and_a_missing_endpoint() -> None:
    client = boto3.session.Session(
        aws_access_key_id="x", aws_secret_access_key="x", region_name=REGION
    ).client("sagemaker")
    endpoint = SageMakerEndpoint(config(), client)
    with Stubber(client) as stubber:
        stub_describe(stubber, "endpoint_updating", "v1", "v2")
        stub_describe(stubber, "endpoint_update_rolled_back")
        assert asyncio.run(endpoint.wait_in_service("v2", 5)) == EndpointStatus(
            "Failed", "v1", ROLLED_BACK_REASON
        )
        stubber.add_client_error(
            "describe_endpoint",
            "ValidationException",
            'Could not find endpoint "arn:aws:sagemaker:us-east-1:123456789012:endpoint/x".',
        )
        assert asyncio.run(endpoint.status()) == EndpointStatus("NotDeployed")
        stubber.add_client_error("describe_endpoint", "ThrottlingException", "Rate exceeded")
        unknown = asyncio.run(endpoint.status())
        assert unknown.status == "Unknown" and "Rate exceeded" in unknown.failure_reason
        stubber.assert_no_pending_responses()


def test_endpoint_deploy_waits_for_an_update_and_recreates_a_failed_endpoint() -> None:
    client = boto3.session.Session(
        aws_access_key_id="x", aws_secret_access_key="x", region_name=REGION
    ).client("sagemaker")
    endpoint = SageMakerEndpoint(config(), client, settle_timeout=5)
    names = endpoint.names("v2", "s3://b/models/job-2/output/model.tar.gz")
    with Stubber(client) as stubber:
        # Redeploying (a rollback, a restart): SageMaker refuses duplicates; reuse them.
        stubber.add_client_error(
            "create_model", "ValidationException", "Cannot create already existing model"
        )
        stubber.add_client_error(
            "create_endpoint_config",
            "ValidationException",
            "Cannot create already existing endpoint configuration",
        )
        stubber.add_response("describe_endpoint", fixture("endpoint_updating"))
        stubber.add_response("describe_endpoint", fixture("endpoint_in_service"))
        stubber.add_response(
            "update_endpoint",
            {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/sentiloop"},
            {"EndpointName": "sentiloop", "EndpointConfigName": names.endpoint_config},
        )
        asyncio.run(endpoint.deploy("v2", "s3://b/models/job-2/output/model.tar.gz"))
        stubber.assert_no_pending_responses()

        stubber.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:x:1:model/m"})
        stubber.add_response(
            "create_endpoint_config",
            {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/c"},
        )
        stubber.add_response("describe_endpoint", fixture("endpoint_failed"))
        stubber.add_response("delete_endpoint", {}, {"EndpointName": "sentiloop"})
        stubber.add_client_error(
            "describe_endpoint", "ValidationException", "Could not find endpoint"
        )
        stubber.add_response(
            "create_endpoint",
            {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/sentiloop"},
            {"EndpointName": "sentiloop", "EndpointConfigName": names.endpoint_config},
        )
        asyncio.run(endpoint.deploy("v2", "s3://b/models/job-2/output/model.tar.gz"))
        stubber.assert_no_pending_responses()


# --------------------------------------------------------------------------- predictions


@pytest.fixture
def prediction_log(tmp_path: Path) -> Iterator[PredictionLog]:
    log = PredictionLog(tmp_path / "predictions.db")
    yield log
    log.close()


def answer(*labels: str) -> str:
    predictions = []
    for label in labels:
        scores = {"negative": 0.1, "neutral": 0.1, "positive": 0.1} | {label: 0.8}
        predictions.append({"label": label, "confidence": 0.8, "scores": scores})
    return json.dumps({"predictions": predictions})


def test_predictions_from_the_endpoint(aws: Aws, prediction_log: PredictionLog) -> None:
    endpoint = SageMakerEndpoint(config(), aws.sagemaker)
    predictor = SageMakerPredictor(aws.runtime, endpoint, prediction_log, max_text_length=100)
    with pytest.raises(Unavailable, match="no model is deployed yet"):
        predictor.predict(["Not yet"])
    assert predictor.state.status == "NotDeployed"
    asyncio.run(endpoint.deploy("v1", aws.store.uri(artifact_key("job-1"))))
    predictor.refresh()
    assert (predictor.state.status, predictor.state.model_version) == ("InService", "v1")

    aws.queue_results(
        {"Body": answer("positive", "negative"), "ContentType": "application/json",
         "InvokedProductionVariant": "model-v1"},
        {"Body": answer("neutral"), "ContentType": "application/json"},
    )  # fmt: skip
    first = predictor.predict(["I love this phone", "The battery died"])
    assert [(p.text, p.label, p.model_version) for p in first] == [
        ("I love this phone", "positive", "v1"),
        ("The battery died", "negative", "v1"),
    ]
    assert first[0].scores == {"negative": 0.1, "neutral": 0.1, "positive": 0.8}
    assert first[0].confidence == 0.8 and first[0].id != first[1].id
    [request] = aws.requests("InvokeEndpoint")
    assert request["EndpointName"] == "sentiloop"
    assert request["ContentType"] == "application/json"
    assert json.loads(request["Body"]) == {"texts": ["I love this phone", "The battery died"]}
    [second] = predictor.predict(["It is a phone"])  # no variant in the answer
    assert (second.label, second.model_version) == ("neutral", "v1")
    for prediction in [*first, second]:
        logged = prediction_log.get(prediction.id)
        assert (logged.text, logged.label, logged.model_version) == (
            prediction.text,
            prediction.label,
            "v1",
        )

    # Answers that are not inference.py's are the endpoint's fault, never the caller's.
    aws.queue_results(
        {"Body": "body", "ContentType": "text/plain"},
        {"Body": answer("positive"), "ContentType": "application/json"},
        {"Body": answer("happy", "sad"), "ContentType": "application/json"},
    )
    for texts in (["first"], ["one", "two"], ["three", "four"]):
        with pytest.raises(Unavailable, match="SageMaker endpoint sentiloop answered"):
            predictor.predict(texts)


def test_prediction_version_is_the_variant_that_answered(
    aws: Aws, prediction_log: PredictionLog
) -> None:
    """During an update both versions may answer: the variant tells which one did."""
    client = boto3.session.Session(
        aws_access_key_id="x", aws_secret_access_key="x", region_name=REGION
    ).client("sagemaker")
    endpoint = SageMakerEndpoint(config(), client)
    predictor = SageMakerPredictor(aws.runtime, endpoint, prediction_log, 100, refresh_seconds=60)
    aws.queue_results(
        {"Body": answer("positive"), "InvokedProductionVariant": "model-v2"},
        {"Body": answer("negative"), "InvokedProductionVariant": "model-v1"},
        {"Body": answer("neutral"), "InvokedProductionVariant": "someone-else"},
        {"Body": answer("neutral"), "InvokedProductionVariant": "someone-else"},
    )
    with Stubber(client) as stubber:
        stub_describe(stubber, "endpoint_updating", "v1", "v2")
        assert predictor.predict(["new"])[0].model_version == "v2"
        assert predictor.state.status == "Loading"
        assert predictor.state.target_version == "v2"
        assert predictor.predict(["old"])[0].model_version == "v1"
        # An unknown variant: the endpoint is read again once, then the served version.
        stub_describe(stubber, "endpoint_updating")
        assert predictor.predict(["other"])[0].model_version == "v1"
        assert predictor.predict(["again"])[0].model_version == "v1"
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "status", "body"),
    [
        ("ThrottlingException", 400, {"message": "Rate exceeded"}),
        ("ModelError", 424, {"Message": "Received server error (500) from primary",
                             "OriginalStatusCode": 500, "OriginalMessage": "CUDA out of memory"}),
        ("ServiceUnavailable", 503, {"Message": "Service is unavailable"}),
        ("ModelNotReadyException", 429, {"Message": "Model is not ready"}),
    ],
)  # fmt: skip
def test_endpoint_errors_are_unavailable(
    aws: Aws, prediction_log: PredictionLog, code: str, status: int, body: dict[str, Any]
) -> None:
    endpoint = SageMakerEndpoint(config(), aws.sagemaker)
    asyncio.run(endpoint.deploy("v1", aws.store.uri(artifact_key("job-1"))))
    answer_with(aws.runtime, "InvokeEndpoint", status, body, {"x-amzn-ErrorType": f"{code}:http"})
    predictor = SageMakerPredictor(aws.runtime, endpoint, prediction_log, max_text_length=100)
    with pytest.raises(Unavailable, match=code):
        predictor.predict(["Fine"])


def test_unreachable_endpoint_is_unavailable(aws: Aws, prediction_log: PredictionLog) -> None:
    endpoint = SageMakerEndpoint(config(), aws.sagemaker)
    asyncio.run(endpoint.deploy("v1", aws.store.uri(artifact_key("job-1"))))
    dead = aws.client("sagemaker-runtime", f"http://127.0.0.1:{free_port()}")
    predictor = SageMakerPredictor(dead, endpoint, prediction_log, max_text_length=100)
    with pytest.raises(Unavailable, match="did not answer"):
        predictor.predict(["Fine"])
    # Nor can the endpoint's state be read: the first request says so.
    blind = SageMakerPredictor(
        aws.runtime,
        SageMakerEndpoint(config(), aws.client("sagemaker", f"http://127.0.0.1:{free_port()}")),
        prediction_log,
        max_text_length=100,
    )
    with pytest.raises(Unavailable, match="cannot be read"):
        blind.predict(["Fine"])


@pytest.mark.parametrize(
    "texts",
    [[], ["   "], ["x" * 21], ["fine", ""], ["fine", "y" * 30, " "], ["a"] * 257],
    ids=["none", "blank", "long", "one-empty", "several", "too-many"],
)
def test_input_rules_are_the_engines(
    tmp_path: Path, prediction_log: PredictionLog, texts: list[str]
) -> None:
    engine = Predictor(
        LocalObjectStore(tmp_path / "objects"),
        tmp_path / "models",
        prediction_log,
        max_text_length=20,
    )
    with pytest.raises(InvalidArgument) as expected:
        engine.predict(texts)
    # No AWS call is made for a bad request: these clients reach nothing.
    nowhere = boto3.session.Session(
        aws_access_key_id="x", aws_secret_access_key="x", region_name=REGION
    )
    sagemaker = SageMakerPredictor(
        nowhere.client("sagemaker-runtime", endpoint_url="http://127.0.0.1:9"),
        SageMakerEndpoint(config(), nowhere.client("sagemaker", endpoint_url="http://127.0.0.1:9")),
        prediction_log,
        max_text_length=20,
    )
    with pytest.raises(InvalidArgument) as got:
        sagemaker.predict(texts)
    assert got.value.violations == expected.value.violations
    with pytest.raises(InvalidArgument):
        check_texts(texts, 20)


# --------------------------------------------------------------------------- model packages


def test_model_package_mirror(aws: Aws) -> None:
    mirror = ModelPackageMirror(config(model_package_group="sentiloop-models"), aws.sagemaker)
    group_arn = mirror.ensure_group()
    assert mirror.ensure_group() == group_arn
    assert len(aws.requests("CreateModelPackageGroup")) == 1
    described_group = aws.sagemaker.describe_model_package_group(
        ModelPackageGroupName="sentiloop-models"
    )
    assert described_group["ModelPackageGroupArn"] == group_arn

    artifact = aws.store.uri(artifact_key("job-1"))
    metrics = {"accuracy": 0.8125, "macro_f1": 0.7, "per_class": {}}
    arns = {
        decision: mirror.register(f"v{i}", artifact, "", metrics, decision)
        for i, decision in enumerate(["promoted", "rejected", "", "forced"], start=1)
    }
    expected = {
        "promoted": "Approved",
        "rejected": "Rejected",
        "": "PendingManualApproval",
        "forced": "Approved",
    }
    for decision, arn in arns.items():
        package = aws.sagemaker.describe_model_package(ModelPackageName=arn)
        assert package["ModelApprovalStatus"] == expected[decision]
        assert package["ModelPackageGroupName"] == "sentiloop-models"
        [container] = package["InferenceSpecification"]["Containers"]
        assert container["Image"] == INFERENCE_IMAGE and container["ModelDataUrl"] == artifact
        assert container["Environment"] == {
            **INFERENCE_ENVIRONMENT,
            "SENTILOOP_INFERENCE_ENGINE": "auto",
        }
        assert package["InferenceSpecification"]["SupportedContentTypes"] == ["application/json"]
    first = aws.sagemaker.describe_model_package(ModelPackageName=arns["promoted"])
    assert first["CustomerMetadataProperties"] == {
        "version": "v1",
        "accuracy": "0.812500",
        "macro_f1": "0.700000",
        "gate_decision": "promoted",
    }
    pending = aws.sagemaker.describe_model_package(ModelPackageName=arns[""])
    assert pending["CustomerMetadataProperties"]["gate_decision"] == "none"
    # Idempotent on SageMaker: the same version and artifact send the same client token.
    tokens = [r["ClientToken"] for r in aws.requests("CreateModelPackage")]
    assert len(set(tokens)) == 4
    mirror.register("v1", artifact, "", metrics, "promoted")
    assert aws.requests("CreateModelPackage")[-1]["ClientToken"] == tokens[0]

    # A version activated later is approved; its metadata survives the update.
    mirror.set_approval(arns[""], "active", "activated by an operator")
    updated = aws.sagemaker.describe_model_package(ModelPackageName=arns[""])
    assert updated["ModelApprovalStatus"] == "Approved"
    assert updated["CustomerMetadataProperties"]["version"] == "v3"
    assert updated["CustomerMetadataProperties"]["gate_decision"] == "active"
    assert [approval_status(d) for d in ("Promoted", "active", "rejected", "registered")] == [
        "Approved",
        "Approved",
        "Rejected",
        "PendingManualApproval",
    ]
