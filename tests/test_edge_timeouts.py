"""Every unary call has a finite timeout at the edge; streams have none; a gRPC client's
own deadline applies at Envoy too, and a call that overruns answers 504 in the JSON error
shape (tests/test_original_api.py shows the shape on a real mesh)."""

from __future__ import annotations

from typing import Any

from sentiloop.core.config import load_settings
from sentiloop.core.envoy_config import (
    LONG_CALL_SECONDS,
    UNARY_TIMEOUT_SECONDS,
    method_timeouts,
    render,
)

STREAMS = {
    "sentiloop.v1.ModelInitService/WatchTrainingJob",
    "sentiloop.v1.ModelInitService/UploadDataset",
    "sentiloop.v1.NotificationService/Subscribe",
}


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    found: list[dict[str, Any]] = manager["route_config"]["virtual_hosts"][0]["routes"]
    return found


def test_unary_calls_time_out_and_streams_do_not() -> None:
    timeouts = method_timeouts()
    assert len(timeouts) >= 34, "every method of every service"
    assert {path for path, seconds in timeouts.items() if seconds == 0} == STREAMS
    assert timeouts["sentiloop.v1.InferenceService/Predict"] == UNARY_TIMEOUT_SECONDS
    assert set(LONG_CALL_SECONDS) <= set(timeouts), "a long call that no longer exists"


def test_the_rendered_routes_carry_them() -> None:
    rendered = {
        route["match"]["path"]: route["route"]
        for route in routes(render(load_settings({})))
        if "path" in route["match"] and "route" in route
    }
    for path, seconds in method_timeouts().items():
        route = rendered[f"/{path}"]
        assert route["timeout"] == f"{seconds}s"
        assert route["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}


def test_replicas_share_the_inference_cluster_and_predict_retries_on_another() -> None:
    config = render(
        load_settings({"SENTILOOP_INFERENCE_REPLICAS": "2", "SENTILOOP_INFERENCE_PORT": "8000"})
    )
    [cluster] = [c for c in config["static_resources"]["clusters"] if c["name"] == "inference"]
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints]
    assert ports == [8000, 9000] and cluster["lb_policy"] == "LEAST_REQUEST"
    rendered = {r["match"].get("path"): r for r in routes(config)}
    predict = rendered["/sentiloop.v1.InferenceService/Predict"]["route"]
    assert "reset" in predict["retry_policy"]["retry_on"]
    # A call that changes something is sent again only when it never reached a replica
    # (the connection was refused): never after it may have run.
    submit = rendered["/sentiloop.v1.FeedbackService/SubmitFeedback"]["route"]["retry_policy"]
    assert set(submit["retry_on"].split(",")) == {"connect-failure", "refused-stream"}
