"""Renders Envoy's configuration from the service list: one listener for JSON
(HTTP/1.1) and gRPC (HTTP/2) clients, the gRPC-JSON transcoder, CORS, request
ids, active gRPC health checks, and 404 for anything unmapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor_pb2
from google.rpc import code_pb2

from sentiloop.core import static_site
from sentiloop.core.auth import METHOD_ROLES, Role
from sentiloop.core.config import MESH_HEALTH_SERVICE, SERVICES, Settings

DESCRIPTOR = Path(__file__).resolve().parent.parent / "v1" / "sentiloop.binpb"
MESH_HEALTH_CLUSTER = "mesh_health"
# Envoy's own admin interface, on loopback beside it: only its Prometheus statistics are
# routed there (GET /metrics/envoy).
ENVOY_ADMIN_CLUSTER = "envoy_admin"
ENVOY_STATS_PATH = "/metrics/envoy"
# gRPC's default largest message: no JSON body that transcodes to more can succeed.
MAX_REQUEST_BODY_BYTES = 4 * 1024 * 1024
# The transcoder buffers a whole unary response to turn it into JSON, by default up to the
# connection's 1 MiB buffer: a page of 100 events with the largest attributes allowed
# (16 KiB each) is 2 MiB and answered 500. The largest page any list RPC may answer
# (1,000 such events) stays under this.
MAX_RESPONSE_BODY_BYTES = 32 * 1024 * 1024

# Runs before the transcoder on requests (the body limit) and after it on responses:
# - turns the HTTP status a service asks for (see sentiloop.core.mesh_health) into the
#   status of a transcoded JSON response, merging the error fields the service sent
#   with it into the body; gRPC responses are left alone;
# - gives a service's transcoded error ({"code","message","details"}) the original
#   API's error shape: "error" (the message) and "detail" (the gRPC status name) in
#   front of the fields gRPC-minded clients read. Only error responses are buffered.
# Envoy's own errors get the same shape from local_reply_config (see _local_replies).
# The message is copied as the JSON string the transcoder wrote: inside it every quote
# is escaped, so the first `","details":` after `"message":"` ends it.
EDGE_LUA = """
local GRPC_STATUS = {GRPC_STATUS_NAMES}

-- The transcoder streams a JSON body upstream instead of holding it to its
-- max_request_body_size, so an oversized one would reach the service and come back as
-- gRPC's RESOURCE_EXHAUSTED (429). Refuse it here as 413 (local_reply_config shapes it).
function envoy_on_request(handle)
  local headers = handle:headers()
  local length = tonumber(headers:get("content-length") or "0") or 0
  if length > MAX_BODY then
    local content_type = headers:get("content-type") or ""
    if string.sub(content_type, 1, 16) ~= "application/grpc" then
      handle:respond({[":status"] = "413"},
        "the request body is " .. length .. " bytes; the limit is MAX_BODY bytes")
    end
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  local grpc = string.sub(content_type, 1, 16) == "application/grpc"
  local status = headers:get("x-sentiloop-http-status")
  if status ~= nil then
    local fields = headers:get("x-sentiloop-error-json")
    headers:remove("x-sentiloop-http-status")
    headers:remove("x-sentiloop-error-json")
    if grpc then
      return
    end
    headers:replace(":status", status)
    if fields ~= nil then
      local body = handle:body()
      local text = body:getBytes(0, body:length())
      body:setBytes(string.sub(fields, 1, -2) .. "," .. string.sub(text, 2))
    end
    return
  end
  if grpc or tonumber(headers:get(":status")) < 400 or content_type ~= "application/json" then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local text = body:getBytes(0, body:length())
  local code, message, rest = string.match(text, '^{"code":(%d+),"message":(".-"),("details":.*)$')
  if code == nil then
    return
  end
  local name = GRPC_STATUS[tonumber(code)] or "UNKNOWN"
  body:setBytes('{"error":' .. message .. ',"detail":"' .. name .. '","code":' .. code
    .. ',"message":' .. message .. ',' .. rest)
end
"""


# Envoy's own errors (malformed JSON, unknown path or query parameter, body too large,
# no healthy upstream, timeouts) as the gRPC code a client reading `code` expects; the
# inverse of the transcoder's mapping of service statuses to HTTP.
LOCAL_REPLY_CODES: dict[int, int] = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    408: code_pb2.DEADLINE_EXCEEDED,
    409: code_pb2.ALREADY_EXISTS,
    413: code_pb2.RESOURCE_EXHAUSTED,
    429: code_pb2.RESOURCE_EXHAUSTED,
    431: code_pb2.RESOURCE_EXHAUSTED,
    500: code_pb2.INTERNAL,
    501: code_pb2.UNIMPLEMENTED,
    502: code_pb2.UNAVAILABLE,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.DEADLINE_EXCEEDED,
}


def _local_replies(rate_per_second: int) -> dict[str, Any]:
    """Envoy's own error answers to JSON clients in the API's error shape: `error` the
    message, `detail` Envoy's reason (e.g. route_not_found, no_healthy_upstream).
    gRPC clients keep Envoy's usual grpc-status answers."""
    # The transcoder sets content-type application/grpc on a JSON request it has begun
    # to transcode (and the original path aside), so that alone does not tell them apart.
    not_grpc = {
        "or_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {
                            "name": "content-type",
                            "string_match": {"prefix": "application/grpc"},
                            "invert_match": True,
                            "treat_missing_header_as_empty": True,
                        }
                    }
                },
                {
                    "header_filter": {
                        "header": {"name": "x-envoy-original-path", "present_match": True}
                    }
                },
            ]
        }
    }

    def mapper(
        status_filter: dict[str, Any], code: int, error: str = "%LOCAL_REPLY_BODY%"
    ) -> dict[str, Any]:
        return {
            "filter": {"and_filter": {"filters": [status_filter, not_grpc]}},
            "body_format_override": {
                "json_format": {
                    "error": error,
                    "detail": "%RESPONSE_CODE_DETAILS%",
                    "code": code,
                    "message": error,
                    "details": [],
                },
                "content_type": "application/json",
            },
        }

    def status(op: str, value: int) -> dict[str, Any]:
        return {
            "status_code_filter": {
                "comparison": {
                    "op": op,
                    "value": {"default_value": value, "runtime_key": "sentiloop.unused"},
                }
            }
        }

    # Envoy answers 429 itself only for the per-client rate limit (a full batch queue is
    # the service's RESOURCE_EXHAUSTED, transcoded).
    rate_limited = (
        f"too many requests from this address (at most {rate_per_second} per second, bursts"
        f" of {2 * rate_per_second}); retry shortly"
    )
    mappers = [
        mapper(status("EQ", http), code, rate_limited if http == 429 else "%LOCAL_REPLY_BODY%")
        for http, code in LOCAL_REPLY_CODES.items()
    ]
    mappers.append(mapper(status("GE", 400), code_pb2.UNKNOWN))
    return {"mappers": mappers}


def _edge_lua() -> str:
    """EDGE_LUA with the body limit and grpc's status names (a Lua array from index 0)."""
    names = ", ".join(
        f'[{number}] = "{code_pb2.Code.Name(number)}"' for number in code_pb2.Code.values()
    )
    return EDGE_LUA.replace("MAX_BODY", str(MAX_REQUEST_BODY_BYTES)).replace(
        "GRPC_STATUS_NAMES", names
    )


def _socket(address: str) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    return {"socket_address": {"address": host, "port_value": int(port)}}


def _cluster(name: str, addresses: list[str], health_service: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        # With replicas (InferenceService), the least busy one takes the next call.
        "lb_policy": "LEAST_REQUEST",
        # Envoy allows 3 retries in flight per cluster by default: when a replica dies
        # under load, every call it held is retried at once, and the rest would fail.
        "circuit_breakers": {"thresholds": [{"max_retries": 1024}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket(a)}} for a in addresses]}
            ],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "1s",
                "no_traffic_interval": "1s",
                # A restarted service gets traffic again within half a second.
                "unhealthy_interval": "0.5s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": health_service},
            }
        ],
        # A host that fails its health check gets no traffic, even when it is the only one.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }


# How long a unary call may take at the edge before Envoy answers 504 (and cancels it
# upstream, which frees its place, e.g. in InferenceService's batch queue). Streams have
# no such limit (a watch lasts as long as its job); the calls that wait for training,
# a deploy or a full evaluation get the time those take.
UNARY_TIMEOUT_SECONDS = 60
LONG_CALL_SECONDS = {
    "sentiloop.v1.RetrainingService/Retrain": 7200,  # waits for the training job
    "sentiloop.v1.ModelInitService/Deploy": 3600,  # a SageMaker endpoint takes minutes
    "sentiloop.v1.EvaluationService/Evaluate": 1800,
    "sentiloop.v1.EvaluationService/CompareModels": 1800,
    "sentiloop.v1.ModelInitService/ImportDataset": 600,
    "sentiloop.v1.FeedbackService/ExportFeedback": 600,
}


def method_timeouts(descriptor: Path = DESCRIPTOR) -> dict[str, int]:
    """Seconds each method of the mesh's services may take at the edge; 0: no limit."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    served = {full for _, full in SERVICES.values()}
    timeouts: dict[str, int] = {}
    for file in files.file:
        for service in file.service:
            name = f"{file.package}.{service.name}"
            if name not in served:
                continue
            for method in service.method:
                path = f"{name}/{method.name}"
                streaming = method.client_streaming or method.server_streaming
                timeouts[path] = (
                    0 if streaming else LONG_CALL_SECONDS.get(path, UNARY_TIMEOUT_SECONDS)
                )
    return timeouts


# Calls that change nothing (a Predict only logs its answer): when the replica that
# serves one dies mid-call, Envoy retries it on another.
IDEMPOTENT = {
    "sentiloop.v1.InferenceService/Predict",
    "sentiloop.v1.InferenceService/PredictBatch",
    "sentiloop.v1.InferenceService/GetPrediction",
    "sentiloop.v1.InferenceService/GetServingStatus",
}


def _method_route(
    path: str, cluster: str, seconds: int, limit: dict[str, Any] | None
) -> dict[str, Any]:
    route: dict[str, Any] = {
        "cluster": cluster,
        "timeout": f"{seconds}s",
        # A gRPC client's own deadline (grpc-timeout) applies at the edge too.
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
    }
    # Any call is sent again on another host when it never reached the first (a replica
    # that died refuses the connection): it cannot have changed anything there.
    route["retry_policy"] = _retry_policy(CHANGES_NOTHING if path in IDEMPOTENT else UNDELIVERED)
    matched: dict[str, Any] = {"match": {"path": f"/{path}"}, "route": route}
    if limit is not None:
        matched["typed_per_filter_config"] = {RATE_LIMIT_FILTER: limit}
    return matched


RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
_LOCAL_RATE_LIMIT = (
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
)


def _rate_limit(per_second: int) -> dict[str, Any]:
    """A token bucket per client address (a wildcard descriptor: Envoy keeps one bucket
    for each address it sees, up to max_dynamic_descriptors, least recently used out)."""

    def always() -> dict[str, Any]:  # a fresh dict each time: YAML would alias a shared one
        return {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}

    bucket = {"max_tokens": 2 * per_second, "tokens_per_fill": per_second, "fill_interval": "1s"}
    return {
        "@type": _LOCAL_RATE_LIMIT,
        "stat_prefix": "public_rpcs",
        # Required beside the descriptors; never the one that runs out.
        "token_bucket": {"max_tokens": 1 << 30, "tokens_per_fill": 1 << 30, "fill_interval": "1s"},
        "filter_enabled": always(),
        "filter_enforced": always(),
        "descriptors": [
            {"entries": [{"key": "remote_address", "value": ""}], "token_bucket": bucket}
        ],
        "max_dynamic_descriptors": 10000,
        "rate_limits": [{"actions": [{"remote_address": {}}]}],
        # gRPC callers get RESOURCE_EXHAUSTED (JSON callers 429), like a full batch queue.
        "rate_limited_as_resource_exhausted": True,
    }


# Retried for any call: it never reached a host. And for calls that change nothing: also
# when the host reset or answered UNAVAILABLE mid-call.
UNDELIVERED = "connect-failure,refused-stream"
CHANGES_NOTHING = UNDELIVERED + ",reset,unavailable"


def _retry_policy(retry_on: str) -> dict[str, Any]:
    return {
        "retry_on": retry_on,
        "num_retries": 3,
        # Retry on another host: the one that failed is likely the service that died.
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
    }


def _route(service: str, cluster: str, retry: bool = False) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": cluster, "timeout": "0s"}
    if retry:
        route["retry_policy"] = _retry_policy(CHANGES_NOTHING)
    return {"match": {"prefix": f"/{service}/"}, "route": route}


def _envoy_stats_route() -> dict[str, Any]:
    """GET /metrics/envoy: Envoy's statistics, read-only (the admin's other pages, which
    can change Envoy's state, stay on loopback)."""
    return {
        "match": {
            "path": ENVOY_STATS_PATH,
            "headers": [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}],
        },
        "route": {
            "cluster": ENVOY_ADMIN_CLUSTER,
            "prefix_rewrite": "/stats/prometheus",
            "timeout": "10s",
        },
        # The transcoder would answer 404: /metrics/envoy maps to no RPC.
        "typed_per_filter_config": {
            static_site.TRANSCODER: {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "disabled": True,
            }
        },
    }


def _envoy_admin_cluster(admin_port: int) -> dict[str, Any]:
    address = f"127.0.0.1:{admin_port}"
    return {
        "name": ENVOY_ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ENVOY_ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(address)}}]}],
        },
    }


def render(settings: Settings) -> dict[str, Any]:
    origin_matchers = [
        {"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}
        for origin in settings.cors_origins
    ]
    routes = [_route(MESH_HEALTH_SERVICE, MESH_HEALTH_CLUSTER, retry=True)]
    cluster_of = {full_name: name for name, (_, full_name) in SERVICES.items()}
    limit = _rate_limit(settings.rate_limit_per_second) if settings.rate_limit_per_second else None
    routes += [
        _method_route(
            path,
            cluster_of[path.split("/")[0]],
            seconds,
            limit if METHOD_ROLES.get(f"/{path}") == Role.PUBLIC else None,
        )
        for path, seconds in method_timeouts(settings_descriptor(settings)).items()
    ]
    # Methods the descriptor does not know (a newer client) still reach their service.
    routes += [_route(full_name, name) for name, (_, full_name) in SERVICES.items()]
    routes.append(_envoy_stats_route())
    # GET /docs (Swagger UI) and GET /openapi.json, answered by Envoy itself.
    routes += static_site.routes()
    # Catch-all to a real upstream, not a direct response: the CORS filter applies its
    # policy only on routes with an upstream, and it sees a JSON path like /predict
    # before the transcoder rewrites it. JSON requests that map to no method never get
    # here (the transcoder answers 404); gRPC calls of unknown methods get the
    # upstream server's UNIMPLEMENTED.
    routes.append({"match": {"prefix": "/"}, "route": {"cluster": MESH_HEALTH_CLUSTER}})
    http_filters = [
        {
            "name": "envoy.filters.http.cors",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
            },
        },
        {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": _edge_lua()},
            },
        },
        {
            "name": "envoy.filters.http.grpc_json_transcoder",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                "proto_descriptor": str(settings_descriptor(settings)),
                "services": [MESH_HEALTH_SERVICE, *(full for _, full in SERVICES.values())],
                "print_options": {
                    "add_whitespace": False,
                    "always_print_primitive_fields": True,
                    "always_print_enums_as_ints": False,
                    "preserve_proto_field_names": True,
                    "stream_newline_delimited": True,
                },
                "convert_grpc_status": True,
                "max_response_body_size": MAX_RESPONSE_BODY_BYTES,
                "request_validation_options": {
                    "reject_unknown_method": True,
                    "reject_unknown_query_parameters": True,
                },
            },
        },
        # After the transcoder: a JSON call is routed by its gRPC method by then, so the
        # limit of that method's route applies to JSON and gRPC callers alike.
        {
            "name": RATE_LIMIT_FILTER,
            "typed_config": {"@type": _LOCAL_RATE_LIMIT, "stat_prefix": "edge"},
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        },
    ]
    connection_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "generate_request_id": True,
        "always_set_request_id_in_response": True,
        "stream_idle_timeout": "3600s",
        "http_protocol_options": {"enable_trailers": True},
        "local_reply_config": _local_replies(settings.rate_limit_per_second),
        # Envoy is the edge: the peer's address decides who is trusted, and only clients
        # on this host may send x-envoy-* headers (e.g. an operator's own
        # x-envoy-upstream-rq-timeout-ms; each method's route has its own timeout, see
        # method_timeouts).
        "use_remote_address": True,
        "internal_address_config": {
            "cidr_ranges": [
                {"address_prefix": "127.0.0.0", "prefix_len": 8},
                {"address_prefix": "::1", "prefix_len": 128},
            ]
        },
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {
                        "json_format": {
                            "ts": "%START_TIME%",
                            "request_id": "%REQ(X-REQUEST-ID)%",
                            "method": "%REQ(:METHOD)%",
                            "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                            "status": "%RESPONSE_CODE%",
                            "grpc_status": "%GRPC_STATUS%",
                            # Why Envoy answered as it did (e.g. upstream_reset_before_response_started).
                            "details": "%RESPONSE_CODE_DETAILS%",
                            "flags": "%RESPONSE_FLAGS%",
                            "duration_ms": "%DURATION%",
                            "upstream": "%UPSTREAM_CLUSTER%",
                        }
                    },
                },
            }
        ],
        "route_config": {
            "name": "sentiloop",
            "max_direct_response_body_size_bytes": static_site.MAX_BODY_BYTES,
            "virtual_hosts": [
                {
                    "name": "sentiloop",
                    "domains": ["*"],
                    "routes": routes,
                    # No policy, no CORS headers: browsers then let only the mesh's own
                    # pages (same origin) read answers or send credentials.
                    "typed_per_filter_config": {
                        "envoy.filters.http.cors": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
                            "allow_origin_string_match": origin_matchers,
                            "allow_methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                            "allow_headers": "content-type, x-request-id, x-grpc-web, grpc-timeout, authorization",
                            "expose_headers": "x-request-id, grpc-status, grpc-message",
                            "max_age": "86400",
                        }
                    }
                    if origin_matchers
                    else {},
                }
            ],
        },
        "http_filters": http_filters,
    }
    clusters = [
        _cluster(name, settings.process_addresses(name), full)
        for name, (_, full) in SERVICES.items()
    ]
    clusters.append(
        _cluster(
            MESH_HEALTH_CLUSTER,
            [settings.address(name) for name in SERVICES],
            MESH_HEALTH_SERVICE,
        )
    )
    clusters.append(_envoy_admin_cluster(settings.envoy_admin_port))
    return {
        "admin": {"address": _socket(f"127.0.0.1:{settings.envoy_admin_port}")},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": _socket(f"{settings.envoy_listen_host}:{settings.envoy_port}"),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def settings_descriptor(settings: Settings) -> Path:
    return settings.envoy_descriptor or DESCRIPTOR


def render_yaml(settings: Settings) -> str:
    text: str = yaml.safe_dump(render(settings), sort_keys=False, width=100)
    return text
