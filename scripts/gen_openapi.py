"""Generates the OpenAPI 3.1 document of the JSON API that Envoy serves, from the descriptor set.

`gen_openapi.py [DESCRIPTOR] [OUT]` reads the FileDescriptorSet that `buf build` writes
(services/sentiloop/v1/sentiloop.binpb: with imports and SourceCodeInfo, so the proto
comments become the document's descriptions) and writes services/sentiloop/v1/openapi.json.
Envoy serves that file on GET /openapi.json and Swagger UI on GET /docs.

The document describes the JSON as Envoy's gRPC-JSON transcoder prints and reads it with
the options of sentiloop.core.envoy_config: proto field names (snake_case), every field
without presence always printed (scalars, enums, repeated and map fields: they are
`required` in response schemas), enums as strings, server streams as newline-delimited
JSON, unknown methods and query parameters rejected. The output is deterministic (sorted
keys except schema properties, which keep the proto's field order) so `make
check-generated` can compare bytes.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "services" / "sentiloop" / "v1" / "sentiloop.binpb"
OUT = ROOT / "services" / "sentiloop" / "v1" / "openapi.json"
PYPROJECT = ROOT / "pyproject.toml"
PACKAGE = "sentiloop.v1"
OPENAPI_VERSION = "3.1.0"

Schema = dict[str, Any]

# Request messages are schemas of their own: nothing is required (Envoy transcodes a
# missing field as its default) and 64-bit integers may be strings or numbers.
INPUT_SUFFIX = "-Input"

# POST routes whose body may be left out: the original API calls them with no body and
# no content type (`curl -X POST /retrain`, `/evaluate`, `/model-init/bootstrap?auto_deploy=true`,
# `/model-init/deploy/JOB`), or every field of the request is optional. Envoy transcodes
# a missing body as an empty message. Routes whose request has no field left for the body
# are optional too. These routes also list their top-level fields as query parameters,
# which is how a client without a body sets them.
OPTIONAL_BODY = {
    ("post", "/evaluate"),
    ("post", "/retrain"),
    ("post", "/model-init/bootstrap"),
    ("post", "/model-init/deploy/{job_name}"),
    ("post", "/models/{version}/activate"),
    ("post", "/models/rollback"),
}

# Methods whose response message also comes with an error status: the mesh health answers
# 503 with its usual body when a service is down (sentiloop.core.mesh_health asks Envoy for it).
RESPONSE_ON_ERROR = {f"{PACKAGE}.MeshHealthService.GetMeshHealth": "503"}

# The error statuses of the mesh: (HTTP status, component name, description).
ERRORS: list[tuple[str, str, str]] = [
    (
        "400",
        "BadRequest",
        "Invalid input (`INVALID_ARGUMENT`, with `google.rpc.BadRequest` field violations "
        "in `details`), a failed precondition (`FAILED_PRECONDITION`, `OUT_OF_RANGE`), or a "
        "request Envoy cannot transcode: malformed JSON, a value of the wrong type, an "
        "unknown query parameter.",
    ),
    (
        "404",
        "NotFound",
        "An unknown resource (`NOT_FOUND`), or a path or HTTP method that maps to no method "
        "of the API (answered by Envoy, e.g. `detail` `route_not_found`).",
    ),
    ("409", "Conflict", "A conflict with the current state (`ALREADY_EXISTS`, `ABORTED`)."),
    ("413", "PayloadTooLarge", "The request body is larger than Envoy buffers."),
    ("429", "TooManyRequests", "Too many requests (`RESOURCE_EXHAUSTED`)."),
    ("500", "InternalError", "An internal error (`INTERNAL`, `UNKNOWN`, `DATA_LOSS`)."),
    (
        "503",
        "Unavailable",
        "Not available now (`UNAVAILABLE`): no model is deployed yet, or a service is down "
        "or not ready (Envoy: `no_healthy_upstream`). Retry later.",
    ),
    ("504", "GatewayTimeout", "The call took too long (`DEADLINE_EXCEEDED`)."),
]

INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
INT64_BOUNDS = {"minimum": -(2**63), "maximum": 2**63 - 1}
UINT64_BOUNDS = {"minimum": 0, "maximum": 2**64 - 1}
INT64_PATTERN = r"^-?[0-9]+$"
UINT64_PATTERN = r"^[0-9]+$"

T = FieldDescriptor
SIGNED_64 = {T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64}
UNSIGNED_64 = {T.TYPE_UINT64, T.TYPE_FIXED64}
SIGNED_32 = {T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32}
UNSIGNED_32 = {T.TYPE_UINT32, T.TYPE_FIXED32}

WRAPPERS: dict[str, int] = {
    "google.protobuf.DoubleValue": T.TYPE_DOUBLE,
    "google.protobuf.FloatValue": T.TYPE_FLOAT,
    "google.protobuf.Int64Value": T.TYPE_INT64,
    "google.protobuf.UInt64Value": T.TYPE_UINT64,
    "google.protobuf.Int32Value": T.TYPE_INT32,
    "google.protobuf.UInt32Value": T.TYPE_UINT32,
    "google.protobuf.BoolValue": T.TYPE_BOOL,
    "google.protobuf.StringValue": T.TYPE_STRING,
    "google.protobuf.BytesValue": T.TYPE_BYTES,
}
# Well-known types with a JSON form of their own (proto3 JSON mapping), never components.
SPECIAL: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": 'Seconds with an "s" suffix, e.g. "1.5s".',
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths.",
    },
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Value": {},
    "google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "properties": {"@type": {"type": "string", "description": "The type URL."}},
    },
}
# Well-known types a query parameter or path variable can carry (as their JSON string).
QUERY_MESSAGES = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    *WRAPPERS,
}

HTTP_BODY = "google.api.HttpBody"
VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^}]*))?\}")
SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)[.!?](?=\s|$)")


def clean_comment(raw: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in raw.splitlines()]
    return "\n".join(line.rstrip() for line in lines).strip()


def summary_of(comment: str) -> str:
    first = " ".join(comment.split("\n\n", 1)[0].split())
    end = SENTENCE_END.search(first)
    return first[: end.end()] if end else first


def comments_of(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    """Every leading (else trailing) comment, by the full name of what it documents."""
    found: dict[str, str] = {}
    for file in files:
        text: dict[tuple[int, ...], str] = {}
        for location in file.source_code_info.location:
            comment = location.leading_comments or location.trailing_comments
            if comment.strip():
                text[tuple(location.path)] = clean_comment(comment)
        prefix = f"{file.package}." if file.package else ""
        for i, message in enumerate(file.message_type):
            _message_comments(message, (4, i), prefix, text, found)
        for i, enum in enumerate(file.enum_type):
            _enum_comments(enum, (5, i), prefix, text, found)
        for i, service in enumerate(file.service):
            found[prefix + service.name] = text.get((6, i), "")
            for j, method in enumerate(service.method):
                found[f"{prefix}{service.name}.{method.name}"] = text.get((6, i, 2, j), "")
    return {name: comment for name, comment in found.items() if comment}


def _message_comments(
    proto: descriptor_pb2.DescriptorProto,
    path: tuple[int, ...],
    scope: str,
    text: dict[tuple[int, ...], str],
    found: dict[str, str],
) -> None:
    name = scope + proto.name
    found[name] = text.get(path, "")
    for k, field in enumerate(proto.field):
        found[f"{name}.{field.name}"] = text.get((*path, 2, k), "")
    for k, nested in enumerate(proto.nested_type):
        _message_comments(nested, (*path, 3, k), f"{name}.", text, found)
    for k, enum in enumerate(proto.enum_type):
        _enum_comments(enum, (*path, 4, k), f"{name}.", text, found)


def _enum_comments(
    proto: descriptor_pb2.EnumDescriptorProto,
    path: tuple[int, ...],
    scope: str,
    text: dict[tuple[int, ...], str],
    found: dict[str, str],
) -> None:
    """An enum's comment, and its values' as `Enum.VALUE` (scoped in the enum, unlike protoc)."""
    name = scope + proto.name
    found[name] = text.get(path, "")
    for k, value in enumerate(proto.value):
        found[f"{name}.{value.name}"] = text.get((*path, 2, k), "")


def synthetic_oneofs(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> set[str]:
    """The oneofs that only carry a proto3 `optional` field's presence."""
    found: set[str] = set()

    def walk(proto: descriptor_pb2.DescriptorProto, name: str) -> None:
        for field in proto.field:
            if field.proto3_optional:
                found.add(f"{name}.{proto.oneof_decl[field.oneof_index].name}")
        for nested in proto.nested_type:
            walk(nested, f"{name}.{nested.name}")

    for file in files:
        prefix = f"{file.package}." if file.package else ""
        for message in file.message_type:
            walk(message, prefix + message.name)
    return found


def message_of(field: FieldDescriptor) -> Descriptor:
    message = field.message_type
    assert message is not None, field.full_name
    return message


def enum_of(field: FieldDescriptor) -> EnumDescriptor:
    enum = field.enum_type
    assert enum is not None, field.full_name
    return enum


def with_description(schema: Schema, description: str) -> Schema:
    return {**schema, "description": description} if description else schema


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def scalar_schema(kind: int, output: bool) -> Schema:
    if kind in SIGNED_64 or kind in UNSIGNED_64:
        signed = kind in SIGNED_64
        pattern = INT64_PATTERN if signed else UINT64_PATTERN
        fmt = "int64" if signed else "uint64"
        if output:
            return {"type": "string", "format": fmt, "pattern": pattern}
        bounds = INT64_BOUNDS if signed else UINT64_BOUNDS
        return {"type": ["string", "integer"], "format": fmt, "pattern": pattern, **bounds}
    if kind in SIGNED_32:
        return dict(INT32)
    if kind in UNSIGNED_32:
        return dict(UINT32)
    if kind == T.TYPE_DOUBLE:
        return {"type": "number", "format": "double"}
    if kind == T.TYPE_FLOAT:
        return {"type": "number", "format": "float"}
    if kind == T.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == T.TYPE_STRING:
        return {"type": "string"}
    if kind == T.TYPE_BYTES:
        return {"type": "string", "format": "byte", "contentEncoding": "base64"}
    raise SystemExit(f"unsupported field type {kind}")


def nullable(schema: Schema) -> Schema:
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*kinds, "null"]}


def http_rules(method: MethodDescriptor) -> Iterator[http_pb2.HttpRule]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    yield rule
    yield from rule.additional_bindings


def verb_and_template(rule: http_pb2.HttpRule, where: str) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise SystemExit(f"{where}: google.api.http rule without a pattern")
    if kind == "custom":
        verb = rule.custom.kind.lower()
        if verb not in {"head", "options", "trace"}:
            raise SystemExit(f"{where}: custom method {rule.custom.kind!r} has no OpenAPI form")
        return verb, rule.custom.path
    template: str = getattr(rule, kind)
    return kind, template


class Generator:
    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto], version: str) -> None:
        self.files = files
        self.version = version
        self.pool = descriptor_pool.DescriptorPool()
        for file in files:
            self.pool.Add(file)
        self.comments = comments_of(files)
        self.synthetic_oneofs = synthetic_oneofs(files)
        self.schemas: dict[str, Schema] = {}

    def comment(self, name: str) -> str:
        return self.comments.get(name, "")

    # --- schemas -----------------------------------------------------------------

    def message_ref(self, message: Descriptor, output: bool) -> Schema:
        name = message.full_name if output else message.full_name + INPUT_SUFFIX
        if name not in self.schemas:
            self.schemas[name] = {}  # claimed first: recursive messages refer to it
            self.schemas[name] = self.message_schema(message, output)
        return ref(name)

    def message_schema(
        self, message: Descriptor, output: bool, leave_out: frozenset[str] = frozenset()
    ) -> Schema:
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in message.fields:
            if field.name in leave_out:
                continue
            properties[field.name] = self.field_schema(field, output)
            # Envoy prints every field without presence, set or not.
            if output and not field.has_presence:
                required.append(field.name)
        schema: Schema = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        notes = [
            "At most one of " + ", ".join(f"`{f.name}`" for f in oneof.fields) + " is set."
            for oneof in message.oneofs
            if oneof.full_name not in self.synthetic_oneofs
        ]
        description = "\n\n".join(filter(None, [self.comment(message.full_name), *notes]))
        return with_description(schema, description)

    def field_schema(self, field: FieldDescriptor, output: bool) -> Schema:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = field.message_type.fields_by_name["key"]
            value = field.message_type.fields_by_name["value"]
            schema: Schema = {
                "type": "object",
                "additionalProperties": self.value_schema(value, output),
            }
            if key.type in SIGNED_64 | SIGNED_32:
                schema["propertyNames"] = {"pattern": INT64_PATTERN}
            elif key.type in UNSIGNED_64 | UNSIGNED_32:
                schema["propertyNames"] = {"pattern": UINT64_PATTERN}
            elif key.type == T.TYPE_BOOL:
                schema["propertyNames"] = {"enum": ["true", "false"]}
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value_schema(field, output)}
        else:
            schema = self.value_schema(field, output)
        return with_description(schema, self.comment(field.full_name))

    def value_schema(self, field: FieldDescriptor, output: bool) -> Schema:
        """The JSON of one value of the field (an element, for repeated fields)."""
        if field.type == T.TYPE_MESSAGE:
            message = message_of(field)
            name = message.full_name
            if name in WRAPPERS:
                return nullable(scalar_schema(WRAPPERS[name], output))
            if name in SPECIAL:
                return dict(SPECIAL[name])
            return self.message_ref(message, output)
        if field.type == T.TYPE_ENUM:
            return self.enum_schema(enum_of(field), output)
        if field.type == T.TYPE_GROUP:
            raise SystemExit(f"{field.full_name}: groups have no JSON form")
        return scalar_schema(field.type, output)

    def enum_schema(self, enum: EnumDescriptor, output: bool) -> Schema:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        names = [value.name for value in enum.values]
        value_comments = {v.name: self.comment(f"{enum.full_name}.{v.name}") for v in enum.values}
        documented = [f"* `{name}`: {text}" for name, text in value_comments.items() if text]
        description = "\n\n".join(
            filter(None, [self.comment(enum.full_name), "\n".join(documented)])
        )
        if output:
            schema: Schema = {"type": "string", "enum": names}
        else:  # Envoy also reads an enum's number
            numbers = [value.number for value in enum.values]
            schema = {"type": ["string", "integer"], "enum": [*names, *numbers]}
        return with_description(schema, description)

    def parameter_schema(self, field: FieldDescriptor) -> Schema:
        """A query parameter's or path variable's value: numbers as numbers, in the URL."""
        if field.type == T.TYPE_MESSAGE:
            name = message_of(field).full_name
            if name in WRAPPERS:
                return self.parameter_scalar(WRAPPERS[name])
            return dict(SPECIAL[name])
        if field.type == T.TYPE_ENUM:
            return self.enum_schema(enum_of(field), output=False)
        return self.parameter_scalar(field.type)

    @staticmethod
    def parameter_scalar(kind: int) -> Schema:
        if kind in SIGNED_64:
            return {"type": "integer", "format": "int64", **INT64_BOUNDS}
        if kind in UNSIGNED_64:
            return {"type": "integer", "format": "uint64", **UINT64_BOUNDS}
        return scalar_schema(kind, output=False)

    # --- operations --------------------------------------------------------------

    def resolve(self, message: Descriptor, path: str, where: str) -> FieldDescriptor:
        field: FieldDescriptor | None = None
        for part in path.split("."):
            if field is not None:
                if field.message_type is None:
                    raise SystemExit(f"{where}: {path!r} is not a field of {message.full_name}")
                message = field.message_type
            field = message.fields_by_name.get(part)
            if field is None:
                raise SystemExit(f"{where}: {path!r} is not a field of {message.full_name}")
        assert field is not None
        return field

    def query_fields(
        self, message: Descriptor, bound: set[str], prefix: str = "", seen: tuple[str, ...] = ()
    ) -> Iterator[tuple[str, FieldDescriptor]]:
        """The fields Envoy fills from query parameters: every scalar, enum, repeated scalar
        and scalar-like well-known type, nested ones by dotted name, except those bound."""
        seen = (*seen, message.full_name)
        for field in message.fields:
            name = prefix + field.name
            nested = field.message_type
            if name in bound:
                continue
            if nested is None:
                yield name, field
            elif nested.full_name in QUERY_MESSAGES:
                if not field.is_repeated:
                    yield name, field
            elif not (
                field.is_repeated  # maps among them
                or nested.full_name in SPECIAL
                or nested.full_name in seen
            ):
                yield from self.query_fields(nested, bound, f"{name}.", seen)

    def parameter(self, name: str, field: FieldDescriptor, where: str) -> Schema:
        schema = self.parameter_schema(field)
        if field.is_repeated:
            schema = {"type": "array", "items": schema}
        parameter: Schema = {"name": name, "in": where, "schema": schema}
        if where == "path":
            parameter["required"] = True
        return with_description(parameter, self.comment(field.full_name))

    def operation(
        self,
        service: ServiceDescriptor,
        method: MethodDescriptor,
        rule: http_pb2.HttpRule,
        verb: str,
        template: str,
        binding: int,
    ) -> tuple[str, Schema]:
        where = f"{method.full_name} ({verb.upper()} {template})"
        request: Descriptor = method.input_type
        if request.full_name == HTTP_BODY:
            raise SystemExit(f"{where}: {HTTP_BODY} requests (raw bodies) are not supported")
        if method.client_streaming:
            raise SystemExit(
                f"{where}: client streams (a JSON array of messages) are not supported"
            )
        path_fields: dict[str, FieldDescriptor] = {}
        path_notes: dict[str, str] = {}
        for match in VARIABLE.finditer(template):
            variable, pattern = match.group(1), match.group(2)
            path_fields[variable] = self.resolve(request, variable, where)
            if pattern not in (None, "*"):
                slashes = "/" in pattern or "**" in pattern
                path_notes[variable] = f"Matches `{pattern}`" + (
                    " (it may contain `/`)." if slashes else "."
                )
        path = VARIABLE.sub(lambda m: "{" + m.group(1) + "}", template)
        if re.search(r"(^|/)\*\*?(/|$|:)", path):
            raise SystemExit(f"{where}: anonymous wildcards have no OpenAPI form")

        parameters = []
        for variable, field in path_fields.items():
            parameter = self.parameter(variable, field, "path")
            if variable in path_notes:
                texts = [parameter.get("description", ""), path_notes[variable]]
                parameter["description"] = " ".join(filter(None, texts))
            parameters.append(parameter)

        operation: Schema = {
            "operationId": f"{service.name}.{method.name}" + (f".{binding}" if binding else ""),
            "tags": [service.name],
            "x-grpc-method": f"/{service.full_name}/{method.name}",
        }
        comment = self.comment(method.full_name)
        if comment:
            operation["summary"] = summary_of(comment)
            operation["description"] = comment

        bound = set(path_fields)
        query: list[tuple[str, FieldDescriptor]] = []
        if rule.body == "*":
            top_level = frozenset(v for v in path_fields if "." not in v)
            schema = self.message_schema(request, output=False, leave_out=top_level)
            schema["title"] = request.full_name
            optional = (verb, path) in OPTIONAL_BODY or not schema["properties"]
            operation["requestBody"] = {
                "required": not optional,
                "content": {"application/json": {"schema": schema}},
            }
            if optional:
                query = [
                    (name, field)
                    for name, field in self.query_fields(request, bound)
                    if "." not in name
                ]
        elif rule.body:
            field = self.resolve(request, rule.body, where)
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self.field_schema(field, False)}},
            }
            query = [
                (name, f)
                for name, f in self.query_fields(request, bound)
                if name != rule.body and not name.startswith(rule.body + ".")
            ]
        else:
            query = list(self.query_fields(request, bound))
        parameters += [self.parameter(name, field, "query") for name, field in query]
        if parameters:
            operation["parameters"] = parameters

        response: Descriptor = method.output_type
        if response.full_name == HTTP_BODY:
            body: Schema = {"type": "string"}
            described = ""
        elif rule.response_body:
            field = self.resolve(response, rule.response_body, where)
            body = self.field_schema(field, output=True)
            body.pop("description", None)
            described = self.comment(field.full_name) or "OK."
        else:
            if response.full_name in SPECIAL:
                body = dict(SPECIAL[response.full_name])
            else:
                body = self.message_ref(response, output=True)
            described = self.comment(response.full_name) or "OK."
        if response.full_name == HTTP_BODY:
            # The one raw answer is Prometheus' text exposition (GET /metrics).
            ok: Schema = {
                "description": comment or "OK.",
                "content": {"text/plain": {"schema": body}},
            }
        elif method.server_streaming:
            ok = {
                "description": (
                    f"{described}\n\nA stream: newline-delimited JSON (`application/x-ndjson`), "
                    f"one `{response.full_name}` message per line, each line sent as the server "
                    "sends the message. If the stream fails after it started, the response "
                    "just ends (the status stays 200)."
                ),
                "content": {"application/x-ndjson": {"schema": body}},
            }
        else:
            ok = {"description": described, "content": {"application/json": {"schema": body}}}
        responses: dict[str, Schema] = {"200": ok}
        for status, name, _ in ERRORS:
            if status == "413" and "requestBody" not in operation:
                continue
            responses[status] = {"$ref": f"#/components/responses/{name}"}
        also = RESPONSE_ON_ERROR.get(method.full_name)
        if also is not None:
            text = next(t for s, _, t in ERRORS if s == also)
            responses[also] = {
                "description": f"{text}\n\nThe method's usual answer, or an `Error`.",
                "content": {"application/json": {"schema": {"anyOf": [body, ref("Error")]}}},
            }
        operation["responses"] = responses
        return path, operation

    # --- the document ------------------------------------------------------------

    def services(self) -> Iterator[ServiceDescriptor]:
        for file in sorted(self.files, key=lambda f: f.name):
            if file.package != PACKAGE:
                continue
            for service in file.service:
                yield self.pool.FindServiceByName(f"{file.package}.{service.name}")

    def document(self) -> Schema:
        paths: dict[str, dict[str, Schema]] = {}
        tags: list[Schema] = []
        for service in self.services():
            tags.append(with_description({"name": service.name}, self.comment(service.full_name)))
            for method in service.methods:
                for binding, rule in enumerate(http_rules(method)):
                    verb, template = verb_and_template(rule, method.full_name)
                    path, operation = self.operation(service, method, rule, verb, template, binding)
                    item = paths.setdefault(path, {})
                    if verb in item:
                        raise SystemExit(
                            f"{verb.upper()} {path} is both {item[verb]['operationId']} "
                            f"and {operation['operationId']}"
                        )
                    item[verb] = operation
        tags.append({"name": "docs", "description": "This document and Swagger UI, from Envoy."})
        paths["/openapi.json"] = {
            "get": {
                "operationId": "Docs.GetOpenApi",
                "tags": ["docs"],
                "summary": "This OpenAPI document.",
                "description": "The API's OpenAPI document, generated from the protos.",
                "responses": {
                    "200": {
                        "description": "The OpenAPI document.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["openapi", "info", "paths"],
                                }
                            }
                        },
                    }
                },
            }
        }
        paths["/metrics/envoy"] = {
            "get": {
                "operationId": "Envoy.GetStats",
                "tags": ["docs"],
                "summary": "Envoy's own statistics for Prometheus.",
                "description": (
                    "Envoy's statistics (requests, responses by class, upstream times and"
                    " health per service) in Prometheus' text format, from its admin"
                    " interface's `/stats/prometheus`. Read-only; no credential."
                ),
                "responses": {
                    "200": {
                        "description": "Envoy's statistics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        }
        paths["/docs"] = {
            "get": {
                "operationId": "Docs.GetSwaggerUi",
                "tags": ["docs"],
                "summary": "Swagger UI on this document.",
                "description": "The API docs as a web page (Swagger UI) on `/openapi.json`.",
                "responses": {
                    "200": {
                        "description": "The Swagger UI page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        }
        return {
            "openapi": OPENAPI_VERSION,
            "info": {"title": "Sentiloop", "version": self.version, "description": INFO},
            "servers": [{"url": "/"}],
            "tags": tags,
            "paths": paths,
            "components": {
                "schemas": {**self.schemas, "Error": ERROR_SCHEMA},
                "responses": {
                    name: {
                        "description": text,
                        "content": {"application/json": {"schema": ref("Error")}},
                    }
                    for _, name, text in ERRORS
                },
            },
        }


INFO = """\
Sentiloop predicts the sentiment of short texts, collects feedback on its predictions and \
retrains itself from it. This is its JSON API: Envoy transcodes every route below to a gRPC \
method of the services in `protos/sentiloop/v1` (see README.md, "JSON API").

* Field names are the proto field names (snake_case).
* Responses always carry every scalar, enum, repeated and map field, with its default \
(`0`, `""`, `false`, `[]`, `{}`) when unset; message fields, timestamps among them, are left \
out when unset.
* 64-bit integers (ids) are JSON strings; requests may send them as strings or numbers. \
Enums are strings; timestamps are RFC 3339 strings.
* Unknown query parameters are rejected (400); unknown paths and methods are 404.
* Errors are JSON objects (`Error`): `error` and `message` say what is wrong, `detail` is \
the gRPC status name or Envoy's reason, `code` the gRPC status code, and `details` holds \
`google.rpc.BadRequest` field violations for invalid input.
* Streams (`application/x-ndjson`) send one JSON message per line.

Generated from the protos by `scripts/gen_openapi.py` (`make protos`)."""

ERROR_SCHEMA: Schema = {
    "type": "object",
    "description": (
        "Every error answer of the API: a service's gRPC status, or Envoy's own answer "
        "(malformed JSON, unknown path or query parameter, body too large, no healthy upstream)."
    ),
    "required": ["error", "detail", "code", "message", "details"],
    "properties": {
        "error": {"type": "string", "description": "What is wrong, in words."},
        "detail": {
            "type": "string",
            "description": (
                "A machine-readable reason: the gRPC status name (e.g. `INVALID_ARGUMENT`, "
                "`NOT_FOUND`, `UNAVAILABLE`) for a service's error, or Envoy's response code "
                "detail (e.g. `route_not_found`) for Envoy's own."
            ),
        },
        "code": {
            "type": "integer",
            "minimum": 0,
            "maximum": 16,
            "description": "The gRPC status code (3 INVALID_ARGUMENT, 5 NOT_FOUND, ...).",
        },
        "message": {"type": "string", "description": "The same as `error`."},
        "details": {
            "type": "array",
            "description": (
                "Error details as `google.protobuf.Any`: `google.rpc.BadRequest` with "
                "`field_violations` (`field`, `description`) for invalid input."
            ),
            "items": {
                "type": "object",
                "required": ["@type"],
                "properties": {"@type": {"type": "string", "description": "The type URL."}},
            },
        },
    },
    "examples": [
        {
            "error": "text: must not be empty",
            "detail": "INVALID_ARGUMENT",
            "code": 3,
            "message": "text: must not be empty",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "field_violations": [{"field": "text", "description": "must not be empty"}],
                }
            ],
        }
    ],
}


def canonical(value: Any, properties: bool = False) -> Any:
    """Sorts every object's keys, except a schema's `properties` (the proto's field order)."""
    if isinstance(value, dict):
        if properties:
            return {key: canonical(item) for key, item in value.items()}
        return {key: canonical(value[key], key == "properties") for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def load(descriptor: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes()).file
    ours = [f for f in files if f.package == PACKAGE]
    if not ours:
        raise SystemExit(f"{descriptor} has no {PACKAGE} files")
    if not any(f.source_code_info.location for f in ours):
        raise SystemExit(f"{descriptor} has no comments: build it without --exclude-source-info")
    return list(files)


def project_version() -> str:
    version: str = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    return version


def render(descriptor: Path = DESCRIPTOR) -> str:
    document = Generator(load(descriptor), project_version()).document()
    top = {key: canonical(value) for key, value in document.items()}
    return json.dumps(top, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="Generates services/sentiloop/v1/openapi.json.")
    parser.add_argument("descriptor", type=Path, nargs="?", default=DESCRIPTOR)
    parser.add_argument("out", type=Path, nargs="?", default=OUT)
    args = parser.parse_args()
    text = render(args.descriptor)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
