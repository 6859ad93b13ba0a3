"""Prometheus metrics (GET /metrics: every process merged; GET /metrics/envoy: Envoy's
own) and OpenTelemetry traces (spans to a real OTLP/HTTP receiver), over the wire on the
real mesh. What the feedback loop's metrics count is checked in tests/test_feedback_loop.py,
on a mesh that predicts, takes feedback and retrains."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client.parser import text_string_to_metric_families

from sentiloop.core import metrics
from sentiloop.core.config import SERVICES
from sentiloop.testing import RunningMesh, free_port, metric_sum, scrape, start_mesh, wait_for
from sentiloop.v1 import health_pb2, health_pb2_grpc


def test_metrics_need_the_operator_credential(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, timeout=10) as anonymous:
        refused = anonymous.get("/metrics")
        assert refused.status_code == 401, refused.text
        assert refused.json()["detail"] == "UNAUTHENTICATED"
        for role in ("operator", "service"):
            allowed = anonymous.get(
                "/metrics", headers={"authorization": f"Bearer {mesh.token(role)}"}
            )
            assert allowed.status_code == 200, allowed.text


def test_metrics_merge_every_process_of_the_mesh(mesh: RunningMesh, http: httpx.Client) -> None:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = list(text_string_to_metric_families(response.text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), "a family written twice is not valid exposition"
    samples = scrape(http)
    up = {labels["service"]: value for labels, value in samples["sentiloop_scrape_up"]}
    assert up == dict.fromkeys(SERVICES, 1.0)
    instances = {labels["instance"] for labels, _ in samples["sentiloop_scrape_up"]}
    assert instances == {mesh.address(name) for name in SERVICES}
    # Every process's own collectors are there, told apart by the labels the merge adds.
    resident = {labels["service"] for labels, _ in samples["process_resident_memory_bytes"]}
    assert resident == set(SERVICES)


def test_each_call_is_counted_by_service_method_and_code(http: httpx.Client) -> None:
    def refused_predicts() -> float:
        return metric_sum(
            scrape(http),
            "sentiloop_rpc_duration_seconds_count",
            service="inference",
            grpc_service="sentiloop.v1.InferenceService",
            grpc_method="Predict",
            grpc_code="INVALID_ARGUMENT",
        )

    before = refused_predicts()
    for _ in range(3):
        assert http.post("/predict", json={"text": ""}).status_code == 400
    assert refused_predicts() == before + 3


def test_one_process_answers_for_itself_over_grpc(mesh: RunningMesh) -> None:
    with mesh.operator_channel(mesh.address("feedback")) as channel:
        body = health_pb2_grpc.MeshHealthServiceStub(channel).GetMetrics(
            health_pb2.GetMetricsRequest(this_process_only=True), timeout=10
        )
    assert body.content_type.startswith("text/plain")
    text = body.data.decode()
    assert "process_resident_memory_bytes" in text
    # Its own exposition: no merge labels, and the merge's own gauge is absent.
    assert 'instance="' not in text and "sentiloop_scrape_up" not in text


def test_envoy_statistics_are_scrapeable(mesh: RunningMesh, http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    response = httpx.get(f"{mesh.url}/metrics/envoy", timeout=10)  # no credential needed
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(response.text)}
    assert "envoy_http_downstream_rq" in families or "envoy_http_downstream_rq_total" in families
    assert 'envoy_cluster_name="inference"' in response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/metrics/envoy"),
        ("GET", "/stats"),
        ("GET", "/config_dump"),
        ("POST", "/quitquitquit"),
    ],
)
def test_envoy_admin_stays_private(http: httpx.Client, method: str, path: str) -> None:
    response = http.request(method, path)
    assert response.status_code == 404, response.text
    assert "envoy_cluster" not in response.text and "configs" not in response.text


def _exposition(lines: str) -> bytes:
    return lines.encode()


def test_merge_writes_each_family_once_and_reports_who_did_not_answer() -> None:
    one = _exposition(
        '# HELP x_total things\n# TYPE x_total counter\nx_total{kind="a"} 2.0\n'
        '# HELP h seconds\n# TYPE h histogram\nh_bucket{le="1.0"} 1.0\nh_bucket{le="+Inf"} 1.0\n'
        "h_count 1.0\nh_sum 0.5\n"
    )
    two = _exposition('# HELP x_total things\n# TYPE x_total counter\nx_total{kind="a"} 3.0\n')
    merged = metrics.merge(
        [("inference", "h:1", one), ("feedback", "h:2", two), ("registry", "h:3", None)]
    ).decode()
    assert merged.count("# TYPE x_total counter") == 1
    assert 'x_total{instance="h:1",kind="a",service="inference"} 2.0' in merged
    assert 'x_total{instance="h:2",kind="a",service="feedback"} 3.0' in merged
    assert 'h_bucket{instance="h:1",le="+Inf",service="inference"} 1.0' in merged
    assert 'sentiloop_scrape_up{instance="h:3",service="registry"} 0.0' in merged
    assert 'sentiloop_scrape_up{instance="h:2",service="feedback"} 1.0' in merged
    list(text_string_to_metric_families(merged))  # parses


def test_turned_off_the_record_functions_count_nothing() -> None:
    def count() -> float:
        return metrics.GATE_DECISIONS.labels("promoted")._value.get()

    before = count()
    metrics.count_gate_decision("promoted")
    assert count() == before + 1
    metrics.configure(False)
    try:
        metrics.count_gate_decision("promoted")
        assert count() == before + 1
    finally:
        metrics.configure(True)


# --- traces ---------------------------------------------------------------------------


class OtlpReceiver:
    """An OTLP/HTTP trace receiver: what a collector does on POST /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.service_of: dict[bytes, str] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = next(
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    )
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            receiver.service_of[span.span_id] = service
                            receiver.spans.append(span)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def named(self, name: str) -> list[Any]:
        return [span for span in list(self.spans) if span.name == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningMesh, OtlpReceiver]]:
    receiver = OtlpReceiver()
    running = start_mesh(
        tmp_path_factory.mktemp("traced"),
        # Spans leave every 100 ms instead of every 5 s, so the test need not wait.
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    yield running, receiver
    assert running.stop() == 0
    receiver.close()


def test_a_request_is_one_trace_across_services(traced: tuple[RunningMesh, OtlpReceiver]) -> None:
    mesh, receiver = traced
    request_id = str(uuid.uuid4())
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=30) as client:
        # RetrainingService asks FeedbackService how many labels there are, then refuses.
        response = client.post("/retrain", json={}, headers={"x-request-id": request_id})
    assert response.status_code == 400, response.text
    assert response.headers["x-request-id"] == request_id

    trace_id = uuid.UUID(request_id).bytes
    retrain = wait_for(
        lambda: [
            s
            for s in receiver.named("sentiloop.v1.RetrainingService/Retrain")
            if s.trace_id == trace_id
        ],
        30,
    )
    [root] = retrain
    assert root.parent_span_id == b""  # the request id started the trace
    assert receiver.service_of[root.span_id] == "sentiloop-retraining"
    assert root.status.code == root.status.STATUS_CODE_ERROR
    attributes = {a.key: a.value.string_value for a in root.attributes}
    assert attributes["rpc.grpc.status_code"] == "FAILED_PRECONDITION"
    assert attributes["sentiloop.request_id"] == request_id

    [child] = wait_for(
        lambda: [
            s
            for s in receiver.named("sentiloop.v1.FeedbackService/GetFeedbackStats")
            if s.trace_id == trace_id
        ],
        30,
    )
    assert child.parent_span_id == root.span_id
    assert receiver.service_of[child.span_id] == "sentiloop-feedback"
    assert child.start_time_unix_nano >= root.start_time_unix_nano
    assert child.end_time_unix_nano <= root.end_time_unix_nano


def test_tracing_off_imports_nothing_of_opentelemetry() -> None:
    probe = (
        "import sys\n"
        "from sentiloop.core import clients, server, tracing\n"
        "from sentiloop.core.config import load_settings\n"
        "tracing.configure(load_settings({ENV}), 'feedback')\n"
        "print(tracing.enabled(), any(m.startswith('opentelemetry') for m in sys.modules))\n"
    )

    def run(env: str) -> str:
        code = probe.replace("{ENV}", env)
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert run("{}") == "False False"
    assert run("{'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://127.0.0.1:9'}") == "True True"
