"""The whole loop once with the S3 object store (SeaweedFS), tiny preset: bootstrap and
deploy, predictions, feedback, retraining; then everything is in the bucket."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from seaweed import SeaweedS3, running_seaweed

from sentiloop.testing import RunningMesh, give_feedback, start_mesh, wait_for

PREFIX = "sentiloop"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_mesh(
    seaweed: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningMesh, str]]:
    bucket = f"mesh-{uuid.uuid4().hex[:12]}"
    seaweed.create_bucket(bucket)
    env = {
        **seaweed.sentiloop_env(bucket, prefix=PREFIX),
        "SENTILOOP_DEFAULT_PRESET": "tiny",
        "SENTILOOP_INFERENCE_POLL_SECONDS": "0.3",
        "SENTILOOP_FEEDBACK_EXPORT_SECONDS": "0.5",
    }
    mesh = start_mesh(tmp_path_factory.mktemp("s3mesh"), extra_env=env)
    yield mesh, bucket
    assert mesh.stop() == 0


def test_the_loop_keeps_everything_in_the_bucket(
    seaweed: SeaweedS3, s3_mesh: tuple[RunningMesh, str]
) -> None:
    mesh, bucket = s3_mesh
    timings: dict[str, float] = {}
    started = time.monotonic()
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=600) as client:
        boot = client.post("/model-init/bootstrap?auto_deploy=true", json={})
        assert boot.status_code == 200, boot.text
        bootstrap_job = boot.json()["job_name"]

        def in_service() -> bool:
            status = client.get("/model-init/endpoint-status").json()
            assert status["status"] != "Failed", status
            return bool(status["status"] == "InService")

        wait_for(in_service, 240)
        timings["bootstrap"] = time.monotonic() - started

        records = give_feedback(client, 14, "s3")
        assert {r["model_version"] for r in records} == {"v1"}
        feedback_ids = [r["id"] for r in records]

        step = time.monotonic()
        retrain = client.post("/retrain", json={})
        assert retrain.status_code == 200, retrain.text
        timings["retrain"] = time.monotonic() - step
        retrain_job = retrain.json()["training_job_name"]
        models = client.get("/models").json()["models"]

    keys = seaweed.keys(bucket, f"{PREFIX}/")
    assert all(k.startswith(f"{PREFIX}/") for k in keys)
    relative = [k[len(PREFIX) + 1 :] for k in keys]

    def under(prefix: str) -> list[str]:
        return [k for k in relative if k.startswith(prefix)]

    # The dataset channels (SageMaker layout) of the bootstrap data and of the snapshot.
    for channel in ("train", "validation", "test"):
        assert any(k.endswith(f"/{channel}/{channel}.csv") for k in under("datasets/amazon/"))
    assert any(k.endswith("/train/train.csv") for k in under("datasets/retraining/"))
    # Both model artifacts.
    for job in (bootstrap_job, retrain_job):
        assert f"models/{job}/output/model.tar.gz" in relative, (job, relative)
    # The feedback snapshot the retraining read, and the exports (every record once).
    assert under("feedback/snapshots/"), relative
    exports = wait_for(lambda: under_exports(seaweed, bucket), 30)
    assert exports == sorted(int(i) for i in feedback_ids)
    # The registry records where the artifacts are: S3 URIs.
    assert {m["path"] for m in models} == {
        f"s3://{bucket}/{PREFIX}/models/{job}/output/model.tar.gz"
        for job in (bootstrap_job, retrain_job)
    }
    print(f"\nS3 mesh timings: {timings}, startup {mesh.startup_seconds:.1f}s")


def under_exports(seaweed: SeaweedS3, bucket: str) -> list[int] | None:
    client = seaweed.client()
    ids = []
    for key in seaweed.keys(bucket, f"{PREFIX}/feedback/exports/"):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        ids += [json.loads(line)["id"] for line in body.splitlines()]
    return sorted(ids) if len(ids) >= 14 else None


def test_import_a_dataset_from_an_s3_uri(
    seaweed: SeaweedS3, s3_mesh: tuple[RunningMesh, str]
) -> None:
    """The user's own bucket (not the store's): read through the S3 object store's client."""
    mesh, store_bucket = s3_mesh
    user_bucket = f"user-{uuid.uuid4().hex[:12]}"
    seaweed.create_bucket(user_bucket)
    lines = ["text,label"] + [
        f'"a {word} sentence, number {i}",{label}'
        for i in range(20)
        for word, label in (("fine", "Positive"), ("bad", "NEGATIVE"), ("plain", "neutral"))
    ]
    seaweed.client().put_object(
        Bucket=user_bucket, Key="in/train_data.csv", Body="\n".join(lines).encode()
    )
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=60) as client:
        uri = f"s3://{user_bucket}/in/train_data.csv"
        imported = client.post("/datasets", json={"name": "mine", "train": {"uri": uri}})
        assert imported.status_code == 200, imported.text
        dataset = imported.json()["dataset"]
        assert dataset["source"] == f"train: {uri}"
        assert {c: n["total"] for c, n in dataset["counts"].items()} == {
            "train": 42, "validation": 9, "test": 9
        }  # fmt: skip
        missing = client.post("/datasets", json={"train": {"uri": f"s3://{user_bucket}/nope.csv"}})
        assert missing.status_code == 404, missing.text
    # Stored in the store's bucket, in the channel layout, with its record.
    keys = seaweed.keys(store_bucket, f"{PREFIX}/datasets/imported/{dataset['dataset_id']}/")
    assert sorted(k.rsplit("/", 2)[-2] for k in keys) == ["test", "train", "validation"]
    assert seaweed.keys(store_bucket, f"{PREFIX}/datasets/index/{dataset['dataset_id']}.json")
