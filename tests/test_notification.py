"""NotificationService end to end on a real mesh: Publish, ListEvents and the
Subscribe stream (gRPC, and NDJSON through Envoy), replay without gap or duplicate,
bad input, durability across restarts, slow subscribers and prompt shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sentiloop.core.clients import Clients
from sentiloop.core.config import load_settings
from sentiloop.core.db import open_database
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.notify import Notifier
from sentiloop.core.processes import pid_alive
from sentiloop.core.supervisor import envoy_routes_ready
from sentiloop.notification.events import KNOWN_TYPES, EventLog
from sentiloop.testing import RunningMesh, free_port, start_mesh
from sentiloop.v1 import notification_pb2 as pb
from sentiloop.v1 import notification_pb2_grpc as pb_grpc

QUEUE_SIZE = 64
# Long, so that "stopped at once" and "waited the grace period out" cannot be confused on
# a loaded machine.
GRACE_SECONDS = 30.0


EVENTS_ENV = {
    "SENTILOOP_NOTIFICATION_QUEUE_SIZE": str(QUEUE_SIZE),
    "SENTILOOP_RESTART_DELAY_SECONDS": "0.2",
    "SENTILOOP_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
}


@pytest.fixture(scope="module")
def events_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(tmp_path_factory.mktemp("events"), extra_env=EVENTS_ENV)
    try:
        yield running
    finally:
        assert running.stop() == 0


@pytest.fixture
def client(events_mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=events_mesh.url, headers=events_mesh.service_headers, timeout=10
    ) as http:
        yield http


@pytest.fixture
def stub(events_mesh: RunningMesh) -> Iterator[pb_grpc.NotificationServiceStub]:
    with events_mesh.operator_channel(
        events_mesh.address("notification"), role="service"
    ) as channel:
        yield pb_grpc.NotificationServiceStub(channel)


def unique_prefix() -> str:
    """A type prefix no other test publishes under."""
    return f"t{uuid.uuid4().hex[:10]}."


def publish(
    stub: pb_grpc.NotificationServiceStub, type: str, subject: str = "", **attributes: Any
) -> pb.Event:
    struct = struct_pb2.Struct()
    struct.update(attributes)
    request = pb.PublishRequest(type=type, subject=subject, message="m", attributes=struct)
    return stub.Publish(request, timeout=5).event


def take(stream: Iterator[pb.SubscribeResponse], count: int) -> list[pb.Event]:
    return [next(stream).event for _ in range(count)]


def violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return {v.field: v.description for v in bad_request.field_violations}


def latest_id(client: httpx.Client) -> int:
    events = client.get("/events", params={"page_size": 1}).json()["events"]
    return int(events[0]["id"]) if events else 0


# ---- Publish and ListEvents


def test_publish_json_through_envoy(client: httpx.Client) -> None:
    response = client.post(
        "/events",
        json={
            "type": "training.started",
            "subject": "job-1",
            "message": "Training job job-1 started",
            "attributes": {"preset": "tiny", "epochs": 3, "nested": {"ok": True, "ids": [1, 2]}},
        },
    )
    assert response.status_code == 200, response.text
    event = response.json()["event"]
    assert int(event["id"]) > 0  # int64 renders as a string
    assert event["type"] == "training.started"
    assert event["subject"] == "job-1"
    assert event["attributes"] == {
        "preset": "tiny",
        "epochs": 3,
        "nested": {"ok": True, "ids": [1, 2]},
    }
    assert event["created_at"].endswith("Z")
    listed = client.get("/events", params={"type_prefix": "training.started"}).json()["events"]
    assert listed[0] == event


@pytest.mark.parametrize("via", ["notification", "envoy"])
def test_publish_over_grpc(events_mesh: RunningMesh, via: str) -> None:
    address = events_mesh.envoy_address if via == "envoy" else events_mesh.address("notification")
    with events_mesh.operator_channel(address, role="service") as channel:
        stub = pb_grpc.NotificationServiceStub(channel)
        first = publish(stub, "model.registered", "v7", accuracy=0.91)
        second = publish(stub, "model.promoted", "v7")
    assert second.id > first.id > 0
    assert first.attributes["accuracy"] == pytest.approx(0.91)
    assert first.created_at.seconds > 0


def test_list_events_newest_first_with_type_prefix(
    client: httpx.Client, stub: pb_grpc.NotificationServiceStub
) -> None:
    prefix = unique_prefix()
    ids = [publish(stub, f"{prefix}{kind}").id for kind in ("a", "b", "a", "c_d", "a")]
    publish(stub, f"{prefix[:-1]}x.a")  # shares the letters, not the dotted prefix
    listed = client.get("/events", params={"type_prefix": prefix}).json()["events"]
    assert [int(e["id"]) for e in listed] == ids[::-1]
    only_a = client.get("/events", params={"type_prefix": f"{prefix}a"}).json()["events"]
    assert [int(e["id"]) for e in only_a] == [ids[4], ids[2], ids[0]]
    # '_' is matched literally, not as a LIKE wildcard
    assert (
        len(stub.ListEvents(pb.ListEventsRequest(type_prefix=f"{prefix}c_"), timeout=5).events) == 1
    )
    assert (
        len(stub.ListEvents(pb.ListEventsRequest(type_prefix=f"{prefix}cx"), timeout=5).events) == 0
    )
    page = client.get("/events", params={"type_prefix": prefix, "page_size": 2}).json()["events"]
    assert [int(e["id"]) for e in page] == [ids[4], ids[3]]
    everything = client.get("/events").json()["events"]
    assert 0 < len(everything) <= 100
    assert [int(e["id"]) for e in everything] == sorted(
        (int(e["id"]) for e in everything), reverse=True
    )


def test_a_page_of_the_largest_events_is_listed_as_json(
    client: httpx.Client, stub: pb_grpc.NotificationServiceStub
) -> None:
    # 100 events with the largest attributes and message allowed are ~2 MiB of JSON:
    # over the transcoder's default 1 MiB buffer, which answered 500.
    prefix = unique_prefix()
    for _ in range(100):
        publish(stub, f"{prefix}big", blob="x" * 16000)
    listed = client.get("/events", params={"type_prefix": prefix})
    assert listed.status_code == 200, listed.text[:300]
    assert len(listed.json()["events"]) == 100 and len(listed.content) > 1024 * 1024


# ---- bad input


BAD_EVENTS = [
    ({"message": "no type"}, "type", "is required"),
    ({"type": "Training.Started"}, "type", "not an event type"),
    ({"type": "training"}, "type", "not an event type"),
    ({"type": "training..started"}, "type", "not an event type"),
    ({"type": "training.started "}, "type", "not an event type"),
    ({"type": "1training.started"}, "type", "not an event type"),
    ({"type": "a." + "b" * 99}, "type", "at most 100"),
    ({"type": "model.deployed", "subject": "s" * 501}, "subject", "at most 500"),
    ({"type": "model.deployed", "message": "m" * 5001}, "message", "at most 5000"),
    ({"type": "model.deployed", "attributes": {"blob": "x" * 17000}}, "attributes", "16384 bytes"),
]


@pytest.mark.parametrize(("body", "field", "why"), BAD_EVENTS)
def test_bad_event_is_400_naming_the_field_and_stores_nothing(
    client: httpx.Client, body: dict[str, object], field: str, why: str
) -> None:
    before = latest_id(client)
    response = client.post("/events", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    found = {v["field"]: v["description"] for v in error["details"][0]["field_violations"]}
    assert why in found[field]
    assert latest_id(client) == before


def test_every_violation_is_named_at_once(stub: pb_grpc.NotificationServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Publish(
            pb.PublishRequest(type="NOPE", subject="s" * 600, message="m" * 6000), timeout=5
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(raised.value)) == {"type", "subject", "message"}


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/events", {"page_size": "1001"}, "page_size"),
        ("/events", {"page_size": "-1"}, "page_size"),
        ("/events", {"type_prefix": "Model."}, "type_prefix"),
        ("/events/stream", {"type_prefixes": ["model.", "MODEL"]}, "type_prefixes[1]"),
        ("/events/stream", {"type_prefixes": [""]}, "type_prefixes[0]"),
    ],
)
def test_bad_query_is_400(
    client: httpx.Client, path: str, params: dict[str, object], field: str
) -> None:
    response = client.get(path, params=params)  # type: ignore[arg-type]
    assert response.status_code == 400, response.text
    assert field in {v["field"] for v in response.json()["details"][0]["field_violations"]}


def test_the_documented_types_are_valid(database_url: str) -> None:
    log = EventLog(open_database(database_url, Path("unused"), schema="notification"))
    try:
        for kind in KNOWN_TYPES:
            assert log.publish(kind, "s", "m", {"n": 1}).type == kind
        with pytest.raises(InvalidArgument) as raised:
            log.publish("model.promoted", attributes={"bad": float("nan")})
        assert "attributes" in raised.value.violations
        assert [e.type for e in log.after(0, ["model.rolled_"], 10)] == ["model.rolled_back"]
        assert [e.type for e in log.list("retraining.")] == ["retraining.triggered"]
    finally:
        log.close()


# ---- Subscribe


def test_subscribe_receives_new_events_in_order(stub: pb_grpc.NotificationServiceStub) -> None:
    prefix = unique_prefix()
    stream = stub.Subscribe(
        pb.SubscribeRequest(type_prefixes=[f"{prefix}wanted", f"{prefix}also."]), timeout=15
    )
    stream.initial_metadata()  # the headers mean: subscribed; what follows is delivered
    expected = []
    for i in range(30):
        kind = ("wanted", "other", "also.this")[i % 3]
        event = publish(stub, f"{prefix}{kind}", str(i))
        if kind != "other":
            expected.append(event.id)
    received = take(stream, len(expected))
    stream.cancel()
    assert [e.id for e in received] == expected
    assert all(not e.type.endswith("other") for e in received)
    assert received[0].subject == "0" and received[0].message == "m"


def test_subscribe_replays_then_continues_live_without_gap_or_duplicate(
    events_mesh: RunningMesh, stub: pb_grpc.NotificationServiceStub
) -> None:
    prefix = unique_prefix()
    stored = [publish(stub, f"{prefix}stored").id for _ in range(40)]
    after_id = stored[9]
    published: list[int] = []

    def keep_publishing() -> None:
        with events_mesh.operator_channel(
            events_mesh.address("notification"), role="service"
        ) as channel:
            other = pb_grpc.NotificationServiceStub(channel)
            for i in range(120):
                published.append(publish(other, f"{prefix}live", str(i)).id)

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    try:
        time.sleep(0.05)  # subscribe while events are being published
        stream = stub.Subscribe(
            pb.SubscribeRequest(type_prefixes=[prefix], after_id=after_id), timeout=20
        )
        first = [next(stream).event.id for _ in range(10)]
    finally:
        publisher.join()
    rest = take(stream, 30 + 120 - 10)
    stream.cancel()
    received = first + [e.id for e in rest]
    assert received == stored[10:] + published  # all of them, in order, once
    assert received == sorted(set(received))


def test_subscribe_with_negative_after_id_replays_everything(
    stub: pb_grpc.NotificationServiceStub,
) -> None:
    prefix = unique_prefix()
    ids = [publish(stub, f"{prefix}x").id for _ in range(3)]
    stream = stub.Subscribe(pb.SubscribeRequest(type_prefixes=[prefix], after_id=-1), timeout=10)
    assert [e.id for e in take(stream, 3)] == ids
    stream.cancel()


def test_json_stream_through_envoy(
    client: httpx.Client, stub: pb_grpc.NotificationServiceStub
) -> None:
    prefix = unique_prefix()
    old = publish(stub, f"{prefix}training.started", "job-0").id
    params = {"after_id": "0", "type_prefixes": [f"{prefix}training.", f"{prefix}model."]}
    with client.stream("GET", "/events/stream", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        published = [
            publish(stub, f"{prefix}training.completed", "job-1", accuracy=0.75).id,
            publish(stub, f"{prefix}retraining.triggered").id,  # filtered out
            publish(stub, f"{prefix}model.deployed", "v2").id,
        ]
        lines = response.iter_lines()
        events = [json.loads(next(lines))["event"] for _ in range(2)]
    assert [int(e["id"]) for e in events] == [published[0], published[2]]  # not `old`: after_id 0
    assert events[0]["attributes"] == {"accuracy": 0.75}
    assert events[1]["subject"] == "v2"
    # with after_id, the stored events come first
    with client.stream(
        "GET", "/events/stream", params={"after_id": str(old - 1), "type_prefixes": prefix}
    ) as response:
        lines = response.iter_lines()
        replayed = [int(json.loads(next(lines))["event"]["id"]) for _ in range(4)]
    assert replayed == [old, *published]


def test_slow_subscriber_does_not_hold_up_publishing(
    events_mesh: RunningMesh, stub: pb_grpc.NotificationServiceStub
) -> None:
    prefix = unique_prefix()
    with events_mesh.operator_channel(
        events_mesh.address("notification"), role="service"
    ) as slow_channel:
        slow = pb_grpc.NotificationServiceStub(slow_channel).Subscribe(
            pb.SubscribeRequest(type_prefixes=[prefix]), timeout=60
        )
        slow.initial_metadata()  # and then it does not read
        fast = stub.Subscribe(pb.SubscribeRequest(type_prefixes=[prefix]), timeout=60)
        fast.initial_metadata()
        received: list[int] = []
        reader = threading.Thread(target=lambda: received.extend(e.id for e in take(fast, 800)))
        reader.start()
        attributes = struct_pb2.Struct()
        attributes.update({"blob": "x" * 15000})
        # 800 events of ~20 KB: more than the transport buffers plus the queue hold
        request = pb.PublishRequest(type=f"{prefix}big", message="y" * 5000, attributes=attributes)
        # A publish held up by the slow subscriber would run into its deadline and fail;
        # how fast publishing is with one is measured by benchmarks/publish_latency.py.
        ids = [stub.Publish(request, timeout=5).event.id for _ in range(800)]
        reader.join(timeout=20)
        assert received == ids  # the other subscriber got every event, in order
        # the slow one gets what was buffered for it, then a clear error
        count = 0
        with pytest.raises(grpc.RpcError) as raised:
            for _ in slow:
                count += 1
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "fell behind" in (raised.value.details() or "")
        assert 0 < count < 800
        fast.cancel()


# ---- the Notifier other services use


def test_notifier_emits_and_never_raises(
    events_mesh: RunningMesh,
    client: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in events_mesh.env.items():
        if name.startswith("SENTILOOP_"):
            monkeypatch.setenv(name, value)
    subject = uuid.uuid4().hex

    async def emit_twice() -> float:
        clients = Clients(load_settings())
        try:
            await Notifier(clients).emit(
                "model.promoted", subject, "v3 is better", version="v3", when=Path("/x")
            )
        finally:
            await clients.close()
        monkeypatch.setenv("SENTILOOP_NOTIFICATION_ADDR", f"127.0.0.1:{free_port()}")
        down = Clients(load_settings())
        started = time.monotonic()
        try:
            await Notifier(down, timeout=1.0).emit("model.promoted", subject, "lost")
        finally:
            await down.close()
        return time.monotonic() - started

    with caplog.at_level(logging.WARNING, logger="sentiloop.notify"):
        elapsed = asyncio.run(emit_twice())
    assert elapsed < 2.0
    assert "could not publish event model.promoted" in caplog.text
    events = client.get("/events", params={"type_prefix": "model.promoted"}).json()["events"]
    mine = [e for e in events if e["subject"] == subject]
    assert len(mine) == 1 and mine[0]["attributes"] == {"version": "v3", "when": "/x"}


# ---- durability, restarts and shutdown


def wait_until_serving(mesh: RunningMesh, client: httpx.Client) -> None:
    mesh.wait_for_health(200, timeout=30)
    deadline = time.monotonic() + 5  # Envoy's own health check takes the service back
    admin_port = int(mesh.env["SENTILOOP_ENVOY_ADMIN_PORT"])
    # A check sent to the stopping process may fail after a later one passed: wait until
    # Envoy has held every host healthy for two of its 0.5 s unhealthy intervals.
    healthy_since: float | None = None
    while healthy_since is None or time.monotonic() - healthy_since < 1.0:
        assert time.monotonic() < deadline
        if envoy_routes_ready(admin_port):
            healthy_since = healthy_since or time.monotonic()
        else:
            healthy_since = None
        time.sleep(0.1)
    assert client.get("/events", params={"page_size": 1}).status_code == 200


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_events_survive_a_restart(events_mesh: RunningMesh, client: httpx.Client, how: int) -> None:
    prefix = unique_prefix()
    stored = client.post("/events", json={"type": f"{prefix}kept", "subject": "s"}).json()["event"]
    os.kill(events_mesh.pid("notification"), how)
    events_mesh.wait_for_health(503, timeout=10)
    wait_until_serving(events_mesh, client)
    listed = client.get("/events", params={"type_prefix": prefix}).json()["events"]
    assert listed == [stored]
    after = client.post("/events", json={"type": f"{prefix}after"}).json()["event"]
    assert int(after["id"]) > int(stored["id"])  # ids keep increasing across restarts


def test_sigterm_ends_open_streams_at_once(events_mesh: RunningMesh, client: httpx.Client) -> None:
    pid = events_mesh.pid("notification")
    with (
        events_mesh.operator_channel(
            events_mesh.address("notification"), role="service"
        ) as channel,
        client.stream("GET", "/events/stream") as json_stream,
    ):
        stub = pb_grpc.NotificationServiceStub(channel)
        stream = stub.Subscribe(pb.SubscribeRequest(), timeout=30)
        stream.initial_metadata()
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        assert list(stream) == []
        assert stream.code() == grpc.StatusCode.OK  # ended cleanly, not cut off
        assert list(json_stream.iter_lines()) == []
        while pid_alive(pid):
            time.sleep(0.02)
        # Ended at once, not after the shutdown grace period (10 s) ran out.
        assert time.monotonic() - started < GRACE_SECONDS
    wait_until_serving(events_mesh, client)


def test_mesh_stops_promptly_with_subscribers_open(tmp_path: Path) -> None:
    # A mesh of its own, as the test stops it.
    events_mesh = start_mesh(tmp_path, extra_env=EVENTS_ENV)
    channel = events_mesh.operator_channel(events_mesh.address("notification"), role="service")
    http = httpx.Client(base_url=events_mesh.url, headers=events_mesh.service_headers, timeout=10)
    try:
        stream = pb_grpc.NotificationServiceStub(channel).Subscribe(
            pb.SubscribeRequest(), timeout=30
        )
        stream.initial_metadata()
        with http.stream("GET", "/events/stream") as json_stream:
            assert json_stream.status_code == 200
            started = time.monotonic()
            assert events_mesh.stop() == 0
            elapsed = time.monotonic() - started
        assert elapsed < GRACE_SECONDS, f"stopping waited out the grace period ({elapsed:.1f}s)"
        assert list(stream) == []
    finally:
        http.close()
        channel.close()
        events_mesh.stop()
