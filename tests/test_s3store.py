"""The S3 object store against a real S3-compatible server (SeaweedFS)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.stub import Stubber  # type: ignore[import-untyped]
from seaweed import SeaweedS3, running_seaweed

from sentiloop.core.config import load_settings
from sentiloop.core.errors import InvalidArgument, NotFound, Unavailable
from sentiloop.core.objectstore import open_object_store
from sentiloop.core.s3store import (
    MiB,
    S3ObjectStore,
    S3Settings,
    make_client,
    open_s3_object_store,
)
from sentiloop.testing import free_port


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def bucket(seaweed: SeaweedS3) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    seaweed.create_bucket(name)
    return name


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in list(os.environ):
        if name.startswith(("SENTILOOP_S3_", "AWS_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def store(seaweed: SeaweedS3, bucket: str, monkeypatch: pytest.MonkeyPatch) -> S3ObjectStore:
    use_env(monkeypatch, seaweed.sentiloop_env(bucket, prefix="sentiloop/"))
    return open_s3_object_store(load_settings())


def test_bytes_and_files_round_trip(store: S3ObjectStore, tmp_path: Path) -> None:
    uri = store.put_bytes("reports/a.json", b'{"a": 1}')
    assert uri == f"s3://{store.bucket}/sentiloop/reports/a.json"
    assert store.get_bytes("reports/a.json") == b'{"a": 1}'
    assert store.exists("reports/a.json") and not store.exists("reports/b.json")
    store.put_bytes("reports/a.json", b"replaced")
    assert store.get_bytes("reports/a.json") == b"replaced"

    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(300_000))
    assert store.put_file("models/j/output/model.tar.gz", source) == store.uri(
        "models/j/output/model.tar.gz"
    )
    target = store.download("models/j/output/model.tar.gz", tmp_path / "deep" / "copy.bin")
    assert target.read_bytes() == source.read_bytes()
    # Keys are stored under the prefix, nothing outside it.
    client = store.client
    listed = client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert {o["Key"] for o in listed} == {
        "sentiloop/reports/a.json",
        "sentiloop/models/j/output/model.tar.gz",
    }


def test_missing_keys_are_not_found(store: S3ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"no object 'nope/x\.csv'"):
        store.get_bytes("nope/x.csv")
    with pytest.raises(NotFound):
        store.download("nope/x.csv", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    assert not store.exists("nope/x.csv")
    assert store.list("nope/") == []
    with pytest.raises(InvalidArgument):
        store.put_bytes("../escape", b"x")


def test_list_with_prefix_and_pages(seaweed: SeaweedS3, bucket: str, store: S3ObjectStore) -> None:
    paged = S3ObjectStore(store.client, bucket, "sentiloop", page_size=2)
    calls = []
    paged.client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda **kwargs: calls.append(1)
    )
    for i in range(7):
        paged.put_bytes(f"datasets/d/train/part-{i}.csv", b"x")
    paged.put_bytes("datasets/d/test/test.csv", b"y")
    paged.put_bytes("datasets/other.json", b"z")
    # Another prefix in the same bucket stays out of this store's listings.
    S3ObjectStore(store.client, bucket, "elsewhere").put_bytes("datasets/d/train/x.csv", b"q")

    train = paged.list("datasets/d/train/")
    assert train == [f"datasets/d/train/part-{i}.csv" for i in range(7)]
    assert len(calls) == 4  # 7 keys, 2 per page
    assert paged.list("datasets/d/") == ["datasets/d/test/test.csv", *train]
    assert paged.list("") == ["datasets/d/test/test.csv", *train, "datasets/other.json"]
    assert seaweed.keys(bucket, "elsewhere/") == ["elsewhere/datasets/d/train/x.csv"]


def test_big_files_upload_in_parts(store: S3ObjectStore, tmp_path: Path) -> None:
    parted = S3ObjectStore(
        store.client,
        store.bucket,
        "sentiloop",
        multipart_threshold=1 * MiB,
        multipart_chunksize=5 * MiB,
    )
    source = tmp_path / "model.tar.gz"
    source.write_bytes(os.urandom(11 * MiB + 123))
    parted.put_file("models/big/output/model.tar.gz", source)
    head = store.client.head_object(
        Bucket=store.bucket, Key="sentiloop/models/big/output/model.tar.gz"
    )
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # three parts
    assert head["ContentLength"] == source.stat().st_size
    copy = parted.download("models/big/output/model.tar.gz", tmp_path / "copy")
    assert copy.read_bytes() == source.read_bytes()

    small = tmp_path / "small"
    small.write_bytes(b"s" * 1000)
    parted.put_file("small", small)
    etag = store.client.head_object(Bucket=store.bucket, Key="sentiloop/small")["ETag"]
    assert "-" not in etag


def test_conditional_writes(store: S3ObjectStore) -> None:
    assert store.put_bytes_if_absent("exports/one.jsonl", b"first") is True
    assert store.put_bytes_if_absent("exports/one.jsonl", b"second") is False
    assert store.get_bytes("exports/one.jsonl") == b"first"

    for round_ in range(5):
        key = f"exports/race-{round_}.jsonl"
        barrier = threading.Barrier(6)
        winners: list[int] = []

        def write(
            writer: int,
            key: str = key,
            barrier: threading.Barrier = barrier,
            winners: list[int] = winners,
        ) -> None:
            barrier.wait()
            if store.put_bytes_if_absent(key, f"writer {writer}".encode() * 1000):
                winners.append(writer)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1, winners
        assert store.get_bytes(key) == f"writer {winners[0]}".encode() * 1000


def test_uri_and_key_of(store: S3ObjectStore) -> None:
    key = "models/job-1/output/model.tar.gz"
    assert store.key_of(store.uri(key)) == key
    for foreign in (
        f"s3://other-bucket/sentiloop/{key}",
        f"s3://{store.bucket}/other/{key}",
        f"s3://{store.bucket}/{key}",
        f"s3://{store.bucket}/sentiloop/",
        f"s3://{store.bucket}/sentiloop/../x",
        f"/data/objects/{key}",
    ):
        with pytest.raises(InvalidArgument):
            store.key_of(foreign)
    bare = S3ObjectStore(store.client, store.bucket)
    assert bare.uri("a/b") == f"s3://{store.bucket}/a/b"
    assert bare.key_of(f"s3://{store.bucket}/a/b") == "a/b"


def test_open_object_store_selects_s3(
    seaweed: SeaweedS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_env(monkeypatch, seaweed.sentiloop_env(bucket))
    store = open_object_store(load_settings())
    assert isinstance(store, S3ObjectStore)
    assert store.uri("k") == f"s3://{bucket}/k"


def test_misconfiguration_fails_at_open_naming_the_problem(
    seaweed: SeaweedS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = seaweed.sentiloop_env(bucket)

    use_env(monkeypatch, {**env, "SENTILOOP_S3_BUCKET": ""})
    with pytest.raises(SystemExit, match="SENTILOOP_S3_BUCKET is not set"):
        open_object_store(load_settings())

    use_env(monkeypatch, {**env, "SENTILOOP_S3_BUCKET": "no-such-bucket"})
    with pytest.raises(SystemExit, match=r"bucket 'no-such-bucket' does not exist at http://"):
        open_s3_object_store(load_settings())

    no_credentials = {
        k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    use_env(monkeypatch, no_credentials)
    with pytest.raises(SystemExit, match="no AWS credentials found"):
        open_s3_object_store(load_settings())

    use_env(monkeypatch, {**env, "AWS_SECRET_ACCESS_KEY": "wrong"})
    with pytest.raises(SystemExit, match="was denied"):
        open_s3_object_store(load_settings())

    dead = f"http://127.0.0.1:{free_port()}"
    use_env(
        monkeypatch,
        {**env, "SENTILOOP_S3_ENDPOINT_URL": dead, "SENTILOOP_S3_MAX_ATTEMPTS": "1"},
    )
    with pytest.raises(SystemExit, match=f"is not reachable at {dead}"):
        open_s3_object_store(load_settings())

    use_env(monkeypatch, {**env, "SENTILOOP_S3_MAX_ATTEMPTS": "many"})
    with pytest.raises(SystemExit, match="SENTILOOP_S3_MAX_ATTEMPTS='many': Input should be"):
        open_s3_object_store(load_settings())
    use_env(monkeypatch, {**env, "SENTILOOP_OBJECT_STORE": "gcs"})
    with pytest.raises(
        SystemExit, match="SENTILOOP_OBJECT_STORE='gcs': Input should be 'local' or 's3'"
    ):
        open_object_store(load_settings())


def test_settings_from_the_environment() -> None:
    settings = S3Settings.from_settings(
        load_settings(
            {
                "SENTILOOP_S3_BUCKET": "b",
                "AWS_ENDPOINT_URL": "http://minio:9000",
                "AWS_DEFAULT_REGION": "eu-west-1",
                "SENTILOOP_S3_MULTIPART_THRESHOLD": "1048576",
            }
        )
    )
    assert settings.endpoint_url == "http://minio:9000"
    assert settings.addressing_style == "path" and settings.region == "eu-west-1"
    assert settings.multipart_threshold == MiB and settings.retry_mode == "standard"
    on_aws = S3Settings.from_settings(load_settings({"SENTILOOP_S3_BUCKET": "b"}))
    assert on_aws.endpoint_url is None and on_aws.addressing_style == "auto"
    assert on_aws.region == "us-east-1"
    with pytest.raises(SystemExit, match="SENTILOOP_S3_RETRY_MODE"):
        load_settings({"SENTILOOP_S3_BUCKET": "b", "SENTILOOP_S3_RETRY_MODE": "never"})


def test_an_unreachable_store_is_unavailable(
    seaweed: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_env(monkeypatch, seaweed.sentiloop_env("b"))
    dead = f"http://127.0.0.1:{free_port()}"
    settings = S3Settings(bucket="b", endpoint_url=dead, max_attempts=2, connect_timeout=1)
    store = S3ObjectStore(make_client(settings), "b")
    source = tmp_path / "f"
    source.write_bytes(b"x")
    for call in (
        lambda: store.get_bytes("k"),
        lambda: store.put_bytes("k", b"x"),
        lambda: store.put_bytes_if_absent("k", b"x"),
        lambda: store.put_file("k", source),
        lambda: store.download("k", tmp_path / "d"),
        lambda: store.exists("k"),
        lambda: store.list("k"),
    ):
        with pytest.raises(Unavailable, match=f"object store unavailable: .* at {dead}"):
            call()


def test_server_errors_and_throttling_are_unavailable(store: S3ObjectStore) -> None:
    stubbed = S3ObjectStore(store.client, store.bucket, "sentiloop")
    with Stubber(store.client) as stub:
        stub.add_client_error("get_object", "SlowDown", http_status_code=503)
        with pytest.raises(Unavailable, match="SlowDown"):
            stubbed.get_bytes("k")
        stub.add_client_error("put_object", "InternalError", http_status_code=500)
        with pytest.raises(Unavailable, match="InternalError"):
            stubbed.put_bytes("k", b"x")
        stub.add_client_error("get_object", "AccessDenied", http_status_code=403)
        with pytest.raises(Unavailable, match="access denied"):
            stubbed.get_bytes("k")
        # A concurrent conditional write (409) is asked again, then answered by 412.
        stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
        stub.add_client_error("put_object", "PreconditionFailed", http_status_code=412)
        assert stubbed.put_bytes_if_absent("k", b"x") is False
        stub.add_client_error("get_object", "NoSuchKey", http_status_code=404)
        with pytest.raises(NotFound):
            stubbed.get_bytes("k")
        stub.assert_no_pending_responses()


def test_delete_removes_and_tolerates_missing(store: S3ObjectStore) -> None:
    store.put_bytes("gone/a.txt", b"a")
    store.delete("gone/a.txt")
    assert not store.exists("gone/a.txt") and store.list("gone/") == []
    store.delete("gone/a.txt")  # already gone: no error, as S3 itself answers
