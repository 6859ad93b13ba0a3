"""Renders Envoy's configuration from the service list: one listener for JSON
(HTTP/1.1) and gRPC (HTTP/2) clients, the gRPC-JSON transcoder, CORS, request
ids, active gRPC health checks, and 404 for anything unmapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sentiloop.core.config import MESH_HEALTH_SERVICE, SERVICES, Settings

DESCRIPTOR = Path(__file__).resolve().parent.parent / "v1" / "sentiloop.binpb"
MESH_HEALTH_CLUSTER = "mesh_health"

# Turns the status a service asks for (see sentiloop.health.servicer) into the HTTP
# status of a transcoded JSON response; gRPC responses are left alone.
STATUS_OVERRIDE_LUA = """
function envoy_on_response(handle)
  local headers = handle:headers()
  local status = headers:get("x-sentiloop-http-status")
  if status ~= nil then
    local content_type = headers:get("content-type") or ""
    if string.sub(content_type, 1, 16) ~= "application/grpc" then
      headers:replace(":status", status)
    end
    headers:remove("x-sentiloop-http-status")
  end
end
"""


def _socket(address: str) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    return {"socket_address": {"address": host, "port_value": int(port)}}


def _cluster(name: str, addresses: list[str], health_service: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
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


def _route(service: str, cluster: str, retry: bool = False) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": cluster, "timeout": "0s"}
    if retry:
        route["retry_policy"] = {
            "retry_on": "connect-failure,reset,unavailable",
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
    return {"match": {"prefix": f"/{service}/"}, "route": route}


def render(settings: Settings, cors_origins: list[str] | None = None) -> dict[str, Any]:
    origins = cors_origins or ["*"]
    origin_matchers = [
        {"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}
        for origin in origins
    ]
    routes = [_route(MESH_HEALTH_SERVICE, MESH_HEALTH_CLUSTER, retry=True)]
    routes += [_route(full_name, name) for name, (_, full_name) in SERVICES.items()]
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
                "default_source_code": {"inline_string": STATUS_OVERRIDE_LUA},
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
                "request_validation_options": {
                    "reject_unknown_method": True,
                    "reject_unknown_query_parameters": True,
                },
            },
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
                            "duration_ms": "%DURATION%",
                            "upstream": "%UPSTREAM_CLUSTER%",
                        }
                    },
                },
            }
        ],
        "route_config": {
            "name": "sentiloop",
            "virtual_hosts": [
                {
                    "name": "sentiloop",
                    "domains": ["*"],
                    "routes": routes,
                    "typed_per_filter_config": {
                        "envoy.filters.http.cors": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
                            "allow_origin_string_match": origin_matchers,
                            "allow_methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                            "allow_headers": "content-type, x-request-id, x-grpc-web, grpc-timeout, authorization",
                            "expose_headers": "x-request-id, grpc-status, grpc-message",
                            "max_age": "86400",
                        }
                    },
                }
            ],
        },
        "http_filters": http_filters,
    }
    clusters = [
        _cluster(name, [settings.address(name)], full) for name, (_, full) in SERVICES.items()
    ]
    clusters.append(
        _cluster(
            MESH_HEALTH_CLUSTER,
            [settings.address(name) for name in SERVICES],
            MESH_HEALTH_SERVICE,
        )
    )
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
    text: str = yaml.safe_dump(render(settings, settings.cors_origins), sort_keys=False, width=100)
    return text
