"""The whole mesh in AWS mode: S3 as the object store on SeaweedFS (a real S3-compatible
server), and moto's server for what cannot run here: SageMaker for training, the endpoint
and the model package mirror, sagemaker-runtime for predictions, SNS for events.

moto reports a training job Completed at once and writes no artifact; its
``ModelArtifacts.S3ModelArtifacts`` is ``<S3OutputPath>/<job>/output/model.tar.gz`` all
the same. Here moto's CreateTrainingJob also writes what a real job leaves there (a small
but complete model.tar.gz, in SeaweedFS), since the registry checks an artifact before it
registers it. Sentiloop trusts SageMaker's answer (no metrics.json in the output, so empty
metrics), registers that path as v1 and deploys it; moto's endpoints are InService at
once, and invoke_endpoint answers what was queued through moto's static results API."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.sagemaker.models import SageMakerModelBackend
from moto.server import ThreadedMotoServer
from seaweed import SeaweedS3, running_seaweed

from sentiloop.testing import MINIMAL_MODEL_FILES, RunningMesh, free_port, start_mesh, tarball

REGION = "us-east-1"
BUCKET = "sentiloop-aws-mesh"
ROLE = "arn:aws:iam::123456789012:role/sentiloop"
TRAINING_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:"
    "2.7.1-transformers4.55.0-gpu-py312-cu124-ubuntu22.04"
)
INFERENCE_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:"
    "2.6.0-transformers4.51.3-cpu-py312-ubuntu22.04"
)
TEXT = "I love this product!"
# What inference.py answers for one text.
ENDPOINT_ANSWER = {
    "predictions": [
        {
            "label": "positive",
            "confidence": 0.91,
            "scores": {"negative": 0.03, "neutral": 0.06, "positive": 0.91},
        }
    ]
}


@dataclass
class Aws:
    url: str
    env: dict[str, str]
    s3: Any
    sagemaker: Any
    sqs: Any
    topic_arn: str
    queue_url: str

    def queue_endpoint_results(self, *results: dict[str, Any]) -> None:
        """Answers for sagemaker-runtime invoke_endpoint (moto's static results API)."""
        request = urllib.request.Request(
            f"{self.url}/moto-api/static/sagemaker/endpoint-results",
            data=json.dumps({"region": REGION, "results": list(results)}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 201

    def events(self, want: set[str], timeout: float) -> list[dict[str, Any]]:
        """Raw SNS messages (the events as JSON) until every type in ``want`` arrived."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not want <= {e["type"] for e in events} and time.monotonic() < deadline:
            reply = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                WaitTimeSeconds=1,
            )
            for message in reply.get("Messages", []):
                event = json.loads(message["Body"])
                attributes = message.get("MessageAttributes", {})
                assert attributes["event_type"]["StringValue"] == event["type"]
                events.append(event)
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
        return events


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """S3 is a real S3-compatible server (SeaweedFS); moto serves only what cannot run
    here: SageMaker, SNS and SQS."""
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def aws(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    s3 = seaweed.client()
    create_training_job = SageMakerModelBackend.create_training_job

    def create_and_write_the_model(self: Any, training_job_name: str, **kwargs: Any) -> Any:
        job = create_training_job(self, training_job_name, **kwargs)
        bucket, _, prefix = kwargs["output_data_config"]["S3OutputPath"][5:].partition("/")
        key = f"{prefix.rstrip('/')}/{training_job_name}/output/model.tar.gz".lstrip("/")
        s3.put_object(Bucket=bucket, Key=key, Body=tarball(MINIMAL_MODEL_FILES))
        return job

    # moto's server runs in this process: its backend is patched like any object here.
    monkeypatch.setattr(SageMakerModelBackend, "create_training_job", create_and_write_the_model)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # moto keeps its accounts in the test process, not in the server: without a reset a
    # test would find the endpoints and jobs an earlier one created.
    httpx.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    session = boto3.session.Session(region_name=REGION, **credentials)
    sagemaker, sns, sqs = (
        session.client(name, endpoint_url=url) for name in ("sagemaker", "sns", "sqs")
    )
    topic_arn = sns.create_topic(Name="sentiloop-events")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="sentiloop-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    env = {
        **seaweed.sentiloop_env(BUCKET),  # the object store: SeaweedFS, with its credentials
        "AWS_ENDPOINT_URL": url,  # everything else: moto (which takes any credentials)
        "AWS_DEFAULT_REGION": REGION,
        "SENTILOOP_TRAINING_BACKEND": "sagemaker",
        "SENTILOOP_ENDPOINT_BACKEND": "sagemaker",
        "SENTILOOP_SAGEMAKER_ROLE_ARN": ROLE,
        "SENTILOOP_SAGEMAKER_TRAINING_IMAGE": TRAINING_IMAGE,
        "SENTILOOP_SAGEMAKER_INFERENCE_IMAGE": INFERENCE_IMAGE,
        "SENTILOOP_SAGEMAKER_POLL_SECONDS": "0.2",
        "SENTILOOP_SNS_TOPIC_ARN": topic_arn,
        "SENTILOOP_INFERENCE_POLL_SECONDS": "0.5",
    }
    yield Aws(url, env, s3, sagemaker, sqs, topic_arn, queue_url)
    server.stop()


@pytest.fixture
def aws_mesh(aws: Aws, tmp_path: Path) -> Iterator[RunningMesh]:
    mesh = start_mesh(tmp_path, extra_env=aws.env)
    try:
        yield mesh
    finally:
        code = mesh.stop()
        logs = {p.name: p.read_text()[-3000:] for p in sorted((tmp_path / "logs").glob("*.log"))}
        assert code == 0, f"the mesh stopped with {code}; logs: {logs}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s")


def watch(client: httpx.Client, job_name: str) -> list[dict[str, Any]]:
    """The NDJSON status stream through Envoy, read to its end."""
    with client.stream("GET", f"/model-init/watch/{job_name}", timeout=60) as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


def test_bootstrap_deploy_and_predict_on_aws(aws: Aws, aws_mesh: RunningMesh) -> None:
    with httpx.Client(
        base_url=aws_mesh.url, headers=aws_mesh.operator_headers, timeout=30
    ) as client:
        # Nothing deployed yet.
        status = client.get("/model-init/endpoint-status").json()
        assert status["status"] == "NotDeployed" and status["backend"] == "sagemaker", status

        boot = client.post("/model-init/bootstrap?auto_deploy=true", json={})
        assert boot.status_code == 200, boot.text
        job_name = boot.json()["job_name"]
        assert boot.json()["auto_deploy"] is True

        # moto completes the job at once; the watch ends with it done.
        updates = watch(client, job_name)
        assert updates[-1]["done"] is True
        assert all(u["done"] is False for u in updates[:-1])
        job = updates[-1]["job"]
        artifact = f"s3://{BUCKET}/models/{job_name}/output/model.tar.gz"
        assert job["status"] == "Completed", job
        assert job["backend"] == "sagemaker"
        assert job["model_artifacts"] == artifact
        # No metrics.json (moto writes no output): the job completes with empty test metrics.
        assert updates[-1]["test_metrics"]["total_samples"] == 0
        assert "test_accuracy" not in job["metrics"]

        # The training job as SageMaker got it.
        described = aws.sagemaker.describe_training_job(TrainingJobName=job_name)
        assert described["AlgorithmSpecification"]["TrainingImage"] == TRAINING_IMAGE
        assert described["RoleArn"] == ROLE
        channels = {
            c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in described["InputDataConfig"]
        }
        assert set(channels) == {"train", "validation", "test"}
        for name, uri in channels.items():
            assert uri.startswith(f"s3://{BUCKET}/datasets/") and uri.endswith(f"/{name}/"), uri
            key = uri[len(f"s3://{BUCKET}/") :] + f"{name}.csv"
            aws.s3.head_object(Bucket=BUCKET, Key=key)  # the data is in the bucket
        assert described["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/models"
        hyperparameters = described["HyperParameters"]
        assert json.loads(hyperparameters["sagemaker_program"]) == "train.py"
        sourcedir = json.loads(hyperparameters["sagemaker_submit_directory"])
        assert sourcedir == f"s3://{BUCKET}/code/{job_name}/sourcedir.tar.gz"
        aws.s3.head_object(Bucket=BUCKET, Key=f"code/{job_name}/sourcedir.tar.gz")

        # Registered as v1 with the path SageMaker reported, and deployed.
        def v1() -> dict[str, Any] | None:
            models = client.get("/models").json().get("models", [])
            return next((m for m in models if m["version"] == "v1"), None)

        model = wait_for(v1, 20, "v1 was not registered")
        assert model["path"] == artifact and model["path"].startswith("s3://")
        assert model["training_job_name"] == job_name
        assert model["source"] == "bootstrap" and model["test_metrics"]["total_samples"] == 0
        # The artifact the job left in the bucket, which the registry checked before it
        # registered the path.
        listed = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"models/{job_name}/")
        assert [o["Key"] for o in listed["Contents"]] == [f"models/{job_name}/output/model.tar.gz"]

        def in_service() -> dict[str, Any] | None:
            status = client.get("/model-init/endpoint-status").json()
            assert status["status"] != "Failed", status
            return status if status["status"] == "InService" else None

        status = wait_for(in_service, 20, "the endpoint did not become InService")
        assert status["model_version"] == "v1" and status["backend"] == "sagemaker", status
        assert status["endpoint_name"] == "sentiloop"
        assert wait_for(lambda: v1()["is_active"], 10, "v1 did not become active")  # type: ignore[index]

        # The endpoint in moto serves v1's model.
        endpoint = aws.sagemaker.describe_endpoint(EndpointName="sentiloop")
        assert endpoint["EndpointStatus"] == "InService"
        config = aws.sagemaker.describe_endpoint_config(
            EndpointConfigName=endpoint["EndpointConfigName"]
        )
        (variant,) = config["ProductionVariants"]
        assert variant["VariantName"] == "model-v1"
        sm_model = aws.sagemaker.describe_model(ModelName=variant["ModelName"])
        assert sm_model["PrimaryContainer"]["ModelDataUrl"] == artifact
        assert sm_model["PrimaryContainer"]["Image"] == INFERENCE_IMAGE

        # The model package group mirrors the registry.
        packages = aws.sagemaker.list_model_packages(ModelPackageGroupName="sentiloop")[
            "ModelPackageSummaryList"
        ]
        assert len(packages) == 1, packages
        package = aws.sagemaker.describe_model_package(
            ModelPackageName=packages[0]["ModelPackageArn"]
        )
        assert package["CustomerMetadataProperties"]["version"] == "v1"
        # Registered as pending (no gate for a bootstrap), approved once it was activated.
        assert package["ModelApprovalStatus"] == "Approved"
        (container,) = package["InferenceSpecification"]["Containers"]
        assert container["ModelDataUrl"] == artifact and container["Image"] == INFERENCE_IMAGE

        # A prediction answered by the endpoint (inference.py's answer, queued in moto).
        aws.queue_endpoint_results(
            {
                "Body": json.dumps(ENDPOINT_ANSWER),
                "ContentType": "application/json",
                "InvokedProductionVariant": "model-v1",
            }
        )
        response = wait_for(
            lambda: (r := client.post("/predict", json={"text": TEXT})).status_code != 503 and r,
            15,
            "predict stayed unavailable",
        )
        assert response.status_code == 200, response.text
        prediction = response.json()
        assert prediction["label"] == "positive" and prediction["confidence"] == 0.91
        assert prediction["scores"] == ENDPOINT_ANSWER["predictions"][0]["scores"]
        assert prediction["model_version"] == "v1" and prediction["text"] == TEXT
        assert prediction["prediction_id"]

        logged = client.get(f"/predictions/{prediction['prediction_id']}")
        assert logged.status_code == 200, logged.text
        assert logged.json()["prediction"] == prediction

        serving = client.get("/predict/status").json()
        assert serving["status"] == "InService" and serving["model_version"] == "v1", serving

    # Every step reached SNS.
    wanted = {"training.started", "training.completed", "model.registered", "model.deployed"}
    events = aws.events(wanted, timeout=15)
    by_type = {e["type"]: e for e in events}
    assert wanted <= set(by_type), sorted(by_type)
    assert by_type["training.started"]["subject"] == job_name
    assert by_type["model.registered"]["subject"] == "v1"
    assert by_type["model.deployed"]["subject"] == "v1"
    assert "InService" in by_type["model.deployed"]["message"]


def test_sagemaker_trains_on_an_imported_dataset(aws: Aws, aws_mesh: RunningMesh) -> None:
    lines = ["text,label"] + [
        f"a {word} message number {i},{label}"
        for i in range(20)
        for word, label in (("great", "positive"), ("awful", "negative"), ("plain", "neutral"))
    ]
    aws.s3.put_object(Bucket=BUCKET, Key="incoming/train_data.csv", Body="\n".join(lines).encode())
    with httpx.Client(
        base_url=aws_mesh.url, headers=aws_mesh.operator_headers, timeout=30
    ) as client:
        imported = client.post(
            "/datasets", json={"train": {"uri": f"s3://{BUCKET}/incoming/train_data.csv"}}
        )
        assert imported.status_code == 200, imported.text
        dataset_id = imported.json()["dataset"]["dataset_id"]
        # A SageMaker job cannot read a folder of this machine; a hub id it cannot reach
        # from here fails at once too (no job is created for either).
        jobs_before = aws.sagemaker.list_training_jobs()["TrainingJobSummaries"]
        for base_model, status, says in [
            (str(Path.cwd()), 400, "a SageMaker job cannot read"),
            ("no-such-org/no-such-model", 400, "cannot be checked on the Hugging Face hub"),
        ]:
            refused = client.post(
                "/model-init/bootstrap", json={"dataset": dataset_id, "base_model": base_model}
            )
            assert refused.status_code == status and says in refused.json()["message"], refused.text
        assert aws.sagemaker.list_training_jobs()["TrainingJobSummaries"] == jobs_before
        boot = client.post("/model-init/bootstrap", json={"dataset": dataset_id})
        assert boot.status_code == 200, boot.text
        job_name = boot.json()["job_name"]

        def created() -> dict[str, Any] | None:  # the job is created in the background
            jobs = aws.sagemaker.list_training_jobs()["TrainingJobSummaries"]
            if not any(j["TrainingJobName"] == job_name for j in jobs):
                return None
            return dict(aws.sagemaker.describe_training_job(TrainingJobName=job_name))

        described = wait_for(created, 20, "the training job was not created")
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in described["InputDataConfig"]
    }
    assert channels == {
        name: f"s3://{BUCKET}/datasets/imported/{dataset_id}/{name}/"
        for name in ("train", "validation", "test")
    }
