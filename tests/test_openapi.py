"""The OpenAPI document of the JSON API (services/sentiloop/v1/openapi.json): valid, up to
date with the protos, and saying what Envoy really answers. Fast: no mesh."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.api import annotations_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from sentiloop.core.auth import METHOD_ROLES, Role

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "services" / "sentiloop" / "v1" / "openapi.json"
DESCRIPTOR = ROOT / "services" / "sentiloop" / "v1" / "sentiloop.binpb"
PROTOS = ROOT / "protos" / "sentiloop" / "v1"
ERROR_REF = "#/components/schemas/Error"
VERBS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_openapi", ROOT / "scripts" / "gen_openapi.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(OPENAPI.read_text(encoding="utf-8"))
    return loaded


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        pointer = node["$ref"].removeprefix("#/").split("/")
        node = document
        for part in pointer:
            node = node[part]
    return node


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    # The document's components ride along so that "#/components/..." resolves.
    return OAS31Validator({**schema, "components": document["components"]})


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for verb, operation in item.items():
            if verb in VERBS:
                yield path, verb, operation


def _response_schema(document: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return schema


def _http_rules() -> Iterator[tuple[str, str, str]]:
    """(RPC, verb, path template) of every google.api.http rule of package sentiloop.v1."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes()).file
    for file in files:
        if file.package != "sentiloop.v1":
            continue
        for service in file.service:
            for method in service.method:
                if method.client_streaming:  # gRPC only (UploadDataset; JSON: ImportDataset)
                    assert not method.options.HasExtension(annotations_pb2.http), method.name
                    continue
                if not method.options.HasExtension(annotations_pb2.http):
                    # gRPC only: calls between the services (ListRecentPredictions), no one else's.
                    role = METHOD_ROLES[f"/{file.package}.{service.name}/{method.name}"]
                    assert role == Role.SERVICE, method.name
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    verb = binding.WhichOneof("pattern")
                    assert verb not in (None, "custom"), method.name
                    yield f"{service.name}.{method.name}", verb, getattr(binding, verb)


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")


def test_the_committed_document_is_what_the_generator_makes() -> None:
    fresh = _generator().render(DESCRIPTOR)
    assert fresh == OPENAPI.read_text(encoding="utf-8"), "openapi.json is stale: run 'make protos'"
    assert fresh.endswith("}\n")
    assert _generator().render(DESCRIPTOR) == fresh  # deterministic


def test_the_descriptor_set_carries_comments() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes()).file
    ours = [f for f in files if f.package == "sentiloop.v1"]
    assert ours and all(f.source_code_info.location for f in ours)


def test_info_and_servers(document: dict[str, Any]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert document["info"]["title"] == "Sentiloop"
    assert document["info"]["version"] == project["version"]
    assert "README" in document["info"]["description"]
    assert document["servers"] == [{"url": "/"}]


def test_every_http_rule_is_an_operation(document: dict[str, Any]) -> None:
    rules = list(_http_rules())
    assert len(rules) >= 30
    for rpc, verb, template in rules:
        path = re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", template)
        assert path in document["paths"], (rpc, path)
        operation = document["paths"][path].get(verb)
        assert operation is not None, (rpc, verb, path)
        assert operation["operationId"].startswith(rpc)
        assert operation["tags"] == [rpc.split(".")[0]]
    operation_ids = [op["operationId"] for _, _, op in _operations(document)]
    assert len(operation_ids) == len(set(operation_ids))
    # The API's routes, the two docs routes and Envoy's statistics, nothing else.
    assert len(operation_ids) == len(rules) + 3


def test_tags_are_the_services_with_their_comments(document: dict[str, Any]) -> None:
    tags = {tag["name"]: tag.get("description", "") for tag in document["tags"]}
    assert "predicts the sentiment" in tags["InferenceService"]
    assert "docs" in tags
    used = {tag for _, _, op in _operations(document) for tag in op["tags"]}
    assert used == set(tags)


def test_predict(document: dict[str, Any]) -> None:
    operation = document["paths"]["/predict"]["post"]
    assert operation["operationId"] == "InferenceService.Predict"
    body = operation["requestBody"]
    assert body["required"] is True
    request = _resolve(document, body["content"]["application/json"]["schema"])
    assert request["properties"]["text"]["type"] == "string"
    assert "required" not in request  # Envoy reads a missing field as its default
    response = _resolve(document, _response_schema(document, operation))
    assert response["properties"]["label"]["type"] == "string"
    assert response["properties"]["confidence"]["type"] == "number"
    assert response["properties"]["scores"]["additionalProperties"]["type"] == "number"
    assert {"text", "label", "confidence", "scores", "model_version", "prediction_id"} <= set(
        response["required"]
    )

    # What Envoy prints validates; a response without a field Envoy always prints does not.
    validator = _validator(document, _response_schema(document, operation))
    printed = {
        "text": "I love this product!",
        "label": "positive",
        "confidence": 0.97,
        "scores": {"positive": 0.97, "negative": 0.02, "neutral": 0.01},
        "model_version": "v1",
        "prediction_id": "3f2c",
    }
    validator.validate(printed)
    assert not validator.is_valid({k: v for k, v in printed.items() if k != "label"})
    assert not validator.is_valid({**printed, "confidence": "0.97"})


def test_the_operation_description_is_the_method_comment(document: dict[str, Any]) -> None:
    source = (PROTOS / "inference.proto").read_text()
    comment = re.search(r"((?:\s*//[^\n]*\n)+)\s*rpc Predict\(", source)
    assert comment is not None
    words = " ".join(line.strip().removeprefix("//").strip() for line in comment[1].splitlines())
    operation = document["paths"]["/predict"]["post"]
    assert " ".join(operation["description"].split()) == words.strip()
    assert operation["summary"] == "Predicts the sentiment of one text."
    record = _schema(document, "sentiloop.v1.FeedbackRecord")
    assert record["description"] == "One stored feedback record."
    assert "assigned by the service" in record["properties"]["id"]["description"]


def test_int64_is_a_string_in_responses(document: dict[str, Any]) -> None:
    operation = document["paths"]["/feedback"]["post"]
    response = _resolve(document, _response_schema(document, operation))
    assert "feedback" not in response.get("required", [])  # a message: left out when unset
    record = _resolve(document, response["properties"]["feedback"])
    assert record["properties"]["id"]["type"] == "string"
    assert record["properties"]["id"]["format"] == "int64"
    assert "id" in record["required"]
    assert "created_at" not in record["required"]  # an unset Timestamp is left out
    assert record["properties"]["created_at"] == {
        "type": "string",
        "format": "date-time",
        "description": "When the service stored the record.",
    }
    validator = _validator(document, _response_schema(document, operation))
    stored = {
        "id": "2",
        "text": "Battery died in a day",
        "model_prediction": "positive",
        "user_label": "negative",
        "prediction_id": "",
        "model_version": "",
        "created_at": "2026-11-26T13:38:38.123Z",
        "audit": False,
    }
    answer = {
        name: {"message": "", "duplicate": False, "id": "2"}.get(name)
        for name in response.get("required", [])
    }
    validator.validate({**answer, "feedback": stored})
    assert not validator.is_valid({**answer, "feedback": {**stored, "id": 2}})


def test_list_feedback_query_parameters(document: dict[str, Any]) -> None:
    operation = document["paths"]["/feedback"]["get"]
    assert "requestBody" not in operation
    parameters = {p["name"]: p for p in operation["parameters"]}
    # Exactly the request's fields: Envoy rejects any other query parameter.
    assert set(parameters) == {"page_size", "page_token"}
    assert all(p["in"] == "query" and not p.get("required") for p in parameters.values())
    assert parameters["page_size"]["schema"]["type"] == "integer"
    assert parameters["page_token"]["schema"]["type"] == "string"
    assert "1..1000" in parameters["page_size"]["description"]


def test_path_parameters(document: dict[str, Any]) -> None:
    for path in ("/model-init/status/{job_name}", "/model-init/watch/{job_name}"):
        parameters = document["paths"][path]["get"]["parameters"]
        assert parameters == [
            {
                "name": "job_name",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": "The job's name.",
            }
        ]
    # A path-bound field is not in the body too.
    deploy = document["paths"]["/model-init/deploy/{job_name}"]["post"]
    body = deploy["requestBody"]["content"]["application/json"]["schema"]
    assert "job_name" not in body["properties"]
    assert "register_only" in body["properties"]


def test_a_server_stream_is_ndjson(document: dict[str, Any]) -> None:
    for path in ("/model-init/watch/{job_name}", "/events/stream"):
        ok = document["paths"][path]["get"]["responses"]["200"]
        assert list(ok["content"]) == ["application/x-ndjson"]
        assert "newline-delimited JSON" in ok["description"]
        assert "one" in ok["description"] and "per line" in ok["description"]
    schema = document["paths"]["/model-init/watch/{job_name}"]["get"]["responses"]["200"]
    message = _resolve(document, schema["content"]["application/x-ndjson"]["schema"])
    assert {"message", "done"} <= set(message["required"])
    assert message["properties"]["job"] == {
        "$ref": "#/components/schemas/sentiloop.v1.TrainingJob",
        "description": "The job's state at this update.",
    }


def test_optional_bodies(document: dict[str, Any]) -> None:
    """The original API's clients POST these with no body; Envoy reads it as {}."""
    for path in (
        "/retrain",
        "/evaluate",
        "/model-init/bootstrap",
        "/model-init/deploy/{job_name}",
        "/model-init/stop/{job_name}",
        "/feedback/export",
    ):
        assert document["paths"][path]["post"]["requestBody"]["required"] is False, path
    for path in ("/predict", "/feedback", "/predict/batch"):
        assert document["paths"][path]["post"]["requestBody"]["required"] is True, path
    # `POST /model-init/bootstrap?auto_deploy=true`, as the original API sends it.
    bootstrap = document["paths"]["/model-init/bootstrap"]["post"]
    query = {p["name"]: p["schema"] for p in bootstrap["parameters"] if p["in"] == "query"}
    assert query["auto_deploy"] == {"type": "boolean"}


def test_errors_use_the_error_component(document: dict[str, Any]) -> None:
    error = _schema(document, "Error")
    assert {"error", "detail", "code", "message", "details"} <= set(error["required"])
    assert error["properties"]["details"]["items"]["required"] == ["@type"]
    for example in error["examples"]:
        _validator(document, {"$ref": ERROR_REF}).validate(example)
    checked = 0
    for path, verb, operation in _operations(document):
        if operation["tags"] == ["docs"]:
            continue
        statuses = set(operation["responses"])
        assert {"400", "404", "409", "429", "500", "503", "504"} <= statuses, (verb, path)
        assert ("413" in statuses) == ("requestBody" in operation), (verb, path)
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            schema = _resolve(document, response)["content"]["application/json"]["schema"]
            refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
            assert ERROR_REF in refs, (verb, path, status)
            checked += 1
    assert checked > 200
    # /health answers 503 with its usual body while a service is down.
    health = document["paths"]["/health"]["get"]["responses"]["503"]
    degraded = {"status": "degraded", "services": {"feedback": "UNREACHABLE"}}
    _validator(document, health["content"]["application/json"]["schema"]).validate(degraded)


def test_docs_routes(document: dict[str, Any]) -> None:
    spec = document["paths"]["/openapi.json"]["get"]
    assert spec["tags"] == ["docs"]
    assert "application/json" in spec["responses"]["200"]["content"]
    page = document["paths"]["/docs"]["get"]
    assert page["tags"] == ["docs"]
    assert list(page["responses"]["200"]["content"]) == ["text/html"]


def test_component_names_are_full_proto_names(document: dict[str, Any]) -> None:
    names = set(document["components"]["schemas"])
    assert "sentiloop.v1.TrainingJob" in names
    assert all(n == "Error" or n.startswith("sentiloop.v1.") for n in names)
    # Request-side variants require nothing and take int64 as a string or a number.
    gate = _schema(document, "sentiloop.v1.GateDecision-Input")
    assert "required" not in gate
    assert "decision" in _schema(document, "sentiloop.v1.GateDecision")["required"]
