"""SNS fan-out of events, against moto's server: a mesh with SENTILOOP_SNS_TOPIC_ARN set
publishes every stored event to the topic; an SQS queue subscribed with raw delivery
and a filter policy on ``event_type`` gets the matching events with their attributes
(and not the others), and a second, unfiltered queue sees SNS's envelope (Subject,
message attributes). A topic that does not exist, a malformed ARN or missing
credentials stop the notification service at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from sentiloop.notification.events import Event
from sentiloop.notification.sns import (
    MAX_SUBJECT_LENGTH,
    event_json,
    publish_request,
    subject_line,
)
from sentiloop.testing import RunningMesh, free_port, start_mesh

REGION = "us-east-1"
# Unique per test run, so the filter below matches only what these tests publish.
PREFIX = f"snstest{uuid.uuid4().hex[:8]}"
WANTED = f"{PREFIX}.model"  # the raw queue's filter policy: event_type starts with it


@dataclass
class Aws:
    url: str
    env: dict[str, str]
    sns: Any
    sqs: Any
    topic_arn: str
    raw_queue: str  # raw delivery, filtered on event_type
    envelope_queue: str  # SNS's JSON envelope, every event


def aws_env(url: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": REGION,
    }


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # moto keeps its state in the test process: start from none, whatever ran before.
    httpx.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
    env = aws_env(url)
    kwargs: dict[str, Any] = {
        "endpoint_url": url,
        "region_name": REGION,
        "aws_access_key_id": "x",
        "aws_secret_access_key": "x",
    }
    sns = boto3.client("sns", **kwargs)
    sqs = boto3.client("sqs", **kwargs)
    topic_arn = sns.create_topic(Name="sentiloop-events")["TopicArn"]
    queues = {}
    for name in ("raw", "envelope"):
        queue_url = sqs.create_queue(QueueName=f"sentiloop-{name}")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        attributes = {}
        if name == "raw":
            attributes = {
                "RawMessageDelivery": "true",
                "FilterPolicy": json.dumps({"event_type": [{"prefix": WANTED}]}),
            }
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes=attributes,
            ReturnSubscriptionArn=True,
        )
        queues[name] = queue_url
    yield Aws(url, env, sns, sqs, topic_arn, queues["raw"], queues["envelope"])
    server.stop()


@pytest.fixture(scope="module")
def sns_mesh(aws: Aws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(
        tmp_path_factory.mktemp("sns"),
        extra_env={"SENTILOOP_SNS_TOPIC_ARN": aws.topic_arn, **aws.env},
    )
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(sns_mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sns_mesh.url, headers=sns_mesh.service_headers, timeout=10) as http:
        yield http


def post_event(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/events", json=body)
    assert response.status_code == 200, response.text
    event: dict[str, Any] = response.json()["event"]
    return event


def drain(aws: Aws, queue_url: str, want: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Messages from the queue until ``want`` have arrived (or the time is up)."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(messages) < want and time.monotonic() < deadline:
        messages += receive(aws, queue_url)
    return messages


def drain_envelopes(aws: Aws, ids: set[str], timeout: float = 10.0) -> list[dict[str, Any]]:
    """The unfiltered queue's envelopes of the events ``ids`` (the mesh publishes its own
    events too, such as serving.changed, which are dropped here)."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while set(found) != ids and time.monotonic() < deadline:
        for message in receive(aws, aws.envelope_queue):
            event_id = json.loads(json.loads(message["Body"])["Message"])["id"]
            if event_id in ids:
                found[event_id] = message
    return list(found.values())


def receive(aws: Aws, queue_url: str) -> list[dict[str, Any]]:
    """One long poll (1 s) of the queue; what it returns is deleted from it."""
    reply = aws.sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=1
    )
    messages: list[dict[str, Any]] = reply.get("Messages", [])
    for message in messages:
        aws.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return messages


def test_events_reach_subscribers_filtered_on_event_type(aws: Aws, client: httpx.Client) -> None:
    skipped = post_event(client, type=f"{PREFIX}.training.started", subject="job-1", message="go")
    wanted = post_event(
        client,
        type=f"{WANTED}.promoted",
        subject="v3",
        message="the candidate v3 was promoted",
        attributes={"accuracy": 0.81, "previous": "v2", "tags": ["a", "b"]},
    )

    # The unfiltered queue gets both: SNS has delivered everything by then.
    envelopes = drain_envelopes(aws, {skipped["id"], wanted["id"]})
    delivered = [json.loads(json.loads(m["Body"])["Message"]) for m in envelopes]
    assert sorted(d["id"] for d in delivered) == sorted([skipped["id"], wanted["id"]])

    # The filtered queue: the model event, not the training one (other tests' model
    # events may be there too).
    raw = {json.loads(m["Body"])["id"]: m for m in drain(aws, aws.raw_queue, 10, timeout=3)}
    assert wanted["id"] in raw and skipped["id"] not in raw, list(raw)
    message = raw[wanted["id"]]
    body = json.loads(message["Body"])
    assert body == {
        "id": wanted["id"],
        "type": f"{WANTED}.promoted",
        "subject": "v3",
        "message": "the candidate v3 was promoted",
        "attributes": {"accuracy": 0.81, "previous": "v2", "tags": ["a", "b"]},
        "created_at": body["created_at"],
    }
    # Same instant as the API reports (the API may print fewer fraction digits).
    assert datetime.fromisoformat(body["created_at"]) == datetime.fromisoformat(
        wanted["created_at"]
    )
    attributes = message["MessageAttributes"]
    assert attributes["event_type"] == {
        "DataType": "String",
        "StringValue": f"{WANTED}.promoted",
    }
    assert attributes["subject"] == {"DataType": "String", "StringValue": "v3"}
    assert attributes["event_id"] == {"DataType": "Number", "StringValue": wanted["id"]}


def test_the_publish_request_carries_subject_and_attributes(aws: Aws, client: httpx.Client) -> None:
    long_subject = "candidate " + "x" * 300 + "\nsecond line"
    event = post_event(client, type=f"{PREFIX}.retraining.triggered", subject=long_subject)
    short = post_event(client, type=f"{PREFIX}.model.deployed")  # no subject
    envelopes = {
        json.loads(json.loads(m["Body"])["Message"])["id"]: json.loads(m["Body"])
        for m in drain_envelopes(aws, {event["id"], short["id"]})
    }
    assert set(envelopes) == {event["id"], short["id"]}

    sent = envelopes[event["id"]]
    assert sent["TopicArn"] == aws.topic_arn
    assert len(sent["Subject"]) == MAX_SUBJECT_LENGTH
    assert sent["Subject"].startswith(f"Sentiloop {PREFIX}.retraining.triggered: candidate xxx")
    assert sent["Subject"].endswith("...")
    assert sent["MessageAttributes"] == {
        "event_type": {"Type": "String", "Value": f"{PREFIX}.retraining.triggered"},
        "subject": {"Type": "String", "Value": long_subject},
        "event_id": {"Type": "Number", "Value": event["id"]},
    }
    assert json.loads(sent["Message"])["subject"] == long_subject  # the body keeps it whole

    # SNS refuses empty attribute values: an event without a subject has no such attribute.
    plain = envelopes[short["id"]]
    assert plain["Subject"] == f"Sentiloop {PREFIX}.model.deployed"
    assert set(plain["MessageAttributes"]) == {"event_type", "event_id"}


def serve_notification(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "SENTILOOP_"))
    }
    full.update(
        {
            "SENTILOOP_DATA_DIR": str(tmp_path),
            "SENTILOOP_HOST": "127.0.0.1",
            "SENTILOOP_NOTIFICATION_PORT": str(free_port()),
            # No credentials from files or instance metadata on the test machine.
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
            "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
            "AWS_EC2_METADATA_DISABLED": "true",
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "sentiloop.serve", "notification"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_topic_that_does_not_exist_stops_the_service(aws: Aws, tmp_path: Path) -> None:
    bogus = f"arn:aws:sns:{REGION}:123456789012:no-such-topic"
    result = serve_notification(tmp_path, {"SENTILOOP_SNS_TOPIC_ARN": bogus, **aws.env})
    assert result.returncode != 0
    assert "configuration error: SENTILOOP_SNS_TOPIC_ARN=" in result.stderr
    assert "no-such-topic" in result.stderr
    assert "the topic does not exist" in result.stderr


def test_a_malformed_topic_arn_stops_the_service(aws: Aws, tmp_path: Path) -> None:
    result = serve_notification(tmp_path, {"SENTILOOP_SNS_TOPIC_ARN": "events", **aws.env})
    assert result.returncode != 0
    assert "configuration error: SENTILOOP_SNS_TOPIC_ARN='events' is not an SNS topic ARN" in (
        result.stderr
    )


def test_missing_credentials_stop_the_service(aws: Aws, tmp_path: Path) -> None:
    env = {"SENTILOOP_SNS_TOPIC_ARN": aws.topic_arn, "AWS_ENDPOINT_URL": aws.url}
    result = serve_notification(tmp_path, env)
    assert result.returncode != 0
    assert "configuration error" in result.stderr
    assert "no AWS credentials found" in result.stderr


def make_event(**fields: Any) -> Event:
    defaults: dict[str, Any] = {
        "id": 7,
        "type": "model.promoted",
        "subject": "v3",
        "message": "m",
        "attributes": {"k": 1},
        "created_at": datetime(2026, 11, 26, 13, 38, 38, 123456, tzinfo=UTC),
    }
    defaults.update(fields)
    return Event(**defaults)


def test_subject_line_is_one_line_of_at_most_100_characters() -> None:
    assert subject_line(make_event()) == "Sentiloop model.promoted: v3"
    assert subject_line(make_event(subject="")) == "Sentiloop model.promoted"
    assert subject_line(make_event(subject="a\r\nb\tc")) == "Sentiloop model.promoted: a b c"
    long = subject_line(make_event(subject="é" * 500))
    assert len(long) == MAX_SUBJECT_LENGTH and long.endswith("...")


def test_publish_request_shape() -> None:
    event = make_event()
    assert json.loads(event_json(event)) == {
        "id": "7",
        "type": "model.promoted",
        "subject": "v3",
        "message": "m",
        "attributes": {"k": 1},
        "created_at": "2026-11-26T13:38:38.123456Z",
    }
    arn = "arn:aws:sns:eu-west-1:123456789012:events"
    request = publish_request(arn, event)
    assert request["TopicArn"] == arn and "MessageGroupId" not in request
    fifo = publish_request(arn + ".fifo", event)
    assert fifo["MessageGroupId"] == "sentiloop-events"
    assert fifo["MessageDeduplicationId"].startswith("7-")
