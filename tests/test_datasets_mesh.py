"""Your data, your base model, on the real mesh (tiny preset): import through Envoy (JSON)
and gRPC (a client-streamed upload), from a key of the object store; errors with their lines
and nothing left behind; a bootstrap on the imported dataset whose version names it, and a
retraining that merges feedback into it; a bad base model refused before any training."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from sentiloop.data import vader
from sentiloop.testing import TINY_ENV, RunningMesh, give_feedback, start_mesh, wait_for
from sentiloop.v1 import model_init_pb2, model_init_pb2_grpc


def tweets_csv(limit: int = 240) -> str:
    """VADER tweets (another domain than the built-in product reviews), labels lower-case."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "text", "label"])
    for i, (_group, text, label) in enumerate(vader.load_domain("tweets")[:limit]):
        writer.writerow([i, text, label.lower()])
    return out.getvalue()


@pytest.fixture(scope="module")
def dataset_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(tmp_path_factory.mktemp("datasets"), extra_env=TINY_ENV)
    try:
        yield running
    finally:
        assert running.stop() == 0


@pytest.fixture
def client(dataset_mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=dataset_mesh.url, headers=dataset_mesh.operator_headers, timeout=600
    ) as http:
        yield http


def dataset_ids(client: httpx.Client) -> list[str]:
    response = client.get("/datasets")
    assert response.status_code == 200, response.text
    return [d["dataset_id"] for d in response.json()["datasets"]]


def test_import_through_envoy_grpc_upload_and_a_store_key(
    dataset_mesh: RunningMesh, client: httpx.Client
) -> None:
    listed = client.get("/datasets").json()["datasets"]
    builtin = [d for d in listed if d["kind"] == "builtin"]
    assert [d["name"] for d in builtin] == ["product-reviews"]
    content = tweets_csv()
    imported = client.post("/datasets", json={"name": "tweets", "train": {"content": content}})
    assert imported.status_code == 200, imported.text
    body = imported.json()
    dataset = body["dataset"]
    assert body["created"] is True and dataset["kind"] == "imported"
    assert len(dataset["dataset_id"]) == 64 and dataset["name"] == "tweets"
    assert set(dataset["counts"]) == {"train", "validation", "test"}
    assert sum(c["total"] for c in dataset["counts"].values()) == 240
    assert dataset["files"]["train"]["rows_read"] == 240
    assert dataset["split"].startswith("stratified by label")
    assert client.get(f"/datasets/{dataset['dataset_id'][:10]}").json()["dataset"] == dataset

    # The same file streamed in chunks over gRPC (through Envoy) is the same dataset.
    data = content.encode()
    with dataset_mesh.operator_channel() as channel:
        stub = model_init_pb2_grpc.ModelInitServiceStub(channel)
        uploaded = stub.UploadDataset(
            iter(
                [model_init_pb2.UploadDatasetRequest(name="tweets", filename="t.csv")]
                + [
                    model_init_pb2.UploadDatasetRequest(chunk=data[i : i + 1000])
                    for i in range(0, len(data), 1000)
                ]
            ),
            timeout=30,
        )
        assert uploaded.dataset.dataset_id == dataset["dataset_id"] and not uploaded.created
        with pytest.raises(grpc.RpcError) as refused:
            stub.UploadDataset(
                iter([model_init_pb2.UploadDatasetRequest(chunk=b"text,label\nok,great\n")]),
                timeout=30,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "line 2: 'great'" in (refused.value.details() or "")

    # A key of the (local) object store, and JSON Lines.
    key = Path(dataset_mesh.data_dir) / "objects" / "uploads" / "more.jsonl"
    key.parent.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(io.StringIO(content)))[:120]
    key.write_text(
        "".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows)
    )
    from_key = client.post("/datasets", json={"train": {"uri": "uploads/more.jsonl"}})
    assert from_key.status_code == 200, from_key.text
    assert from_key.json()["dataset"]["source"] == "train: uploads/more.jsonl"
    assert {
        builtin[0]["dataset_id"], dataset["dataset_id"], from_key.json()["dataset"]["dataset_id"]
    } <= set(dataset_ids(client))  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"train": {"content": "words,label\nhi,positive\n"}}, 400, "missing column(s) text"),
        ({"train": {"content": "text,label\nhi,positive\nyo,meh\n"}}, 400, "line 3: 'meh'"),
        (
            {"train": {"content": "text,label\n,positive\n"}},
            400,
            "empty or missing text on line(s) 2",
        ),
        ({"train": {"content": "text,label\nhi,positive\n"}}, 400, "too few examples"),
        ({"train": {"uri": "uploads/none.csv"}}, 404, "no object 'uploads/none.csv'"),
        ({"train": {"uri": "s3://bucket/train_data.csv"}}, 400, "SENTILOOP_OBJECT_STORE=s3"),
        ({"name": "x"}, 400, "train: is required"),
        ({"name": "../evil", "train": {"content": tweets_csv(60)}}, 400, "name:"),
    ],
)
def test_import_errors_leave_nothing_behind(
    client: httpx.Client, body: dict[str, object], status: int, says: str
) -> None:
    before = dataset_ids(client)
    response = client.post("/datasets", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["message"], response.json()["message"]
    assert dataset_ids(client) == before


def test_a_bad_base_model_or_hyperparameter_fails_before_any_training(
    client: httpx.Client,
) -> None:
    jobs = client.get("/model-init/jobs").json().get("jobs", [])
    for body, says in [
        ({"base_model": "/no/such/model"}, "no folder '/no/such/model'"),
        ({"base_model": "cardiffnlp/twitter-roberta-base-sentiment-latest"}, "runs offline"),
        ({"hyperparameters": {"epochs": "-1"}}, "hyperparameter epochs='-1'"),
        ({"hyperparameters": {"epoch": "3"}}, "unknown hyperparameter(s): epoch"),
        ({"dataset": "0123456789abcdef"}, "no dataset '0123456789abcdef'"),
    ]:
        response = client.post("/model-init/bootstrap", json={"preset": "tiny", **body})
        assert response.status_code in (400, 404), response.text
        assert says in response.json()["message"], response.json()["message"]
    assert client.get("/model-init/jobs").json().get("jobs", []) == jobs


def test_bootstrap_on_an_imported_dataset_and_retraining_merges_feedback_into_it(
    dataset_mesh: RunningMesh, client: httpx.Client
) -> None:
    # The bootstrap imports a file of the object store first (a dataset id works as well).
    upload = dataset_mesh.data_dir / "objects" / "uploads" / "tweets.csv"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_text(tweets_csv(270))  # content no other test imports
    started = client.post(
        "/model-init/bootstrap?auto_deploy=true",
        json={"dataset": "uploads/tweets.csv", "hyperparameters": {"max_steps": "10"}},
    )
    assert started.status_code == 200, started.text
    again = client.post("/datasets", json={"train": {"content": tweets_csv(270)}}).json()
    dataset = again["dataset"]
    assert started.json()["dataset_id"] == dataset["dataset_id"] and not again["created"]
    assert dataset["name"] == "tweets" and dataset["source"] == "train: uploads/tweets.csv"
    wait_for(lambda: client.get("/model-init/endpoint-status").json()["status"] == "InService", 180)
    v1 = client.get("/models/active").json()["model"]
    assert v1["dataset_hash"] == dataset["dataset_id"]  # the version's lineage names it
    assert v1["test_metrics"]["total_samples"] == dataset["counts"]["test"]["total"]
    report = client.post("/evaluate", json={}).json()  # the test set is the dataset's own
    assert report["test_metrics"]["total_samples"] == dataset["counts"]["test"]["total"]

    give_feedback(client, 12, "mine")
    retrained = client.post("/retrain", json={})
    assert retrained.status_code == 200, retrained.text
    v2 = client.get(f"/models/{retrained.json()['model_version']}").json()["model"]
    snapshot = client.get(f"/datasets/{v2['dataset_hash']}").json()["dataset"]
    assert snapshot["kind"] == "snapshot" and dataset["dataset_id"] in snapshot["source"]
    assert snapshot["channels"]["test"] == dataset["channels"]["test"]
    assert snapshot["channels"]["validation"] == dataset["channels"]["validation"]
    train = dataset_mesh.data_dir / "objects" / snapshot["channels"]["train"] / "train.csv"
    rows = list(csv.DictReader(train.read_text().splitlines()))
    assert sum(r["source"] == "feedback" for r in rows) == 12
    assert sum(r["source"] == "original" for r in rows) == dataset["counts"]["train"]["total"]
    assert v2["dataset_hash"] not in dataset_ids(client)  # the listing hides snapshots


def test_the_cli_uploads_lists_and_shows(dataset_mesh: RunningMesh, tmp_path: Path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        # The CLI finds the operator token in its data directory: this mesh's.
        env = {**os.environ, "SENTILOOP_DATA_DIR": str(dataset_mesh.data_dir)}
        return subprocess.run(
            [sys.executable, "-m", "sentiloop.cli", *args, "--address", dataset_mesh.envoy_address],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    train = tmp_path / "train_data.csv"
    train.write_text(tweets_csv(90))
    test = tmp_path / "test.jsonl"
    test.write_text(
        "".join(
            json.dumps({"text": f"extra {label} {i}", "label": label}) + "\n"
            for i in range(3)
            for label in ("Positive", "negative", "NEUTRAL")
        )
    )
    imported = cli("dataset", "import", str(train), "--test", str(test))
    assert imported.returncode == 0, imported.stderr
    assert "name 'train_data', imported, from train: train_data.csv, test: test.jsonl" in (
        imported.stdout
    )
    test_line = next(line for line in imported.stdout.splitlines() if line.startswith("  test "))
    assert test_line.split() == ["test", "9", "negative", "3,", "neutral", "3,", "positive", "3"]
    assert "train file: 90 rows read" in imported.stdout
    dataset_id = imported.stdout.split()[1]
    listed = cli("dataset", "list")
    assert listed.returncode == 0 and dataset_id[:12] in listed.stdout
    shown = cli("dataset", "show", dataset_id[:10])
    assert shown.returncode == 0 and f"dataset {dataset_id}" in shown.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,great\n")
    refused = cli("dataset", "import", str(bad))
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr and "line 2: 'great'" in refused.stderr
