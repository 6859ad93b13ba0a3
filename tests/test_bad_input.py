"""Bad input through Envoy gets a 4xx that says what is wrong, and changes nothing."""

from __future__ import annotations

import httpx
import pytest

from sentiloop.testing import RunningMesh

OVERSIZED = "x" * 5001  # the default limit is 5000 characters

CASES = [
    # (method, path, body, expected status, words the error must contain)
    ("POST", "/feedback", '{"text": "", "user_label": "positive"}', 400, "text: must not be empty"),
    ("POST", "/feedback", '{"text": "   ", "user_label": "positive"}', 400, "must not be empty"),
    ("POST", "/feedback", '{"text": "ok", "user_label": "great"}', 400, "'great' is not a label"),
    ("POST", "/feedback", '{"text": "ok"}', 400, "user_label: is required"),
    (
        "POST",
        "/feedback",
        '{"text": "ok", "user_label": "positive", "model_prediction": "meh"}',
        400,
        "model_prediction: 'meh' is not a label",
    ),
    (
        "POST",
        "/feedback",
        f'{{"text": "{OVERSIZED}", "user_label": "positive"}}',
        400,
        "the limit is 5000",
    ),
    ("POST", "/feedback", '{"text": "ok", "user_label": ', 400, "Unexpected end of string"),
    ("POST", "/feedback", '{"text": 5, "user_label": "positive"}', 400, "text"),
    ("GET", "/feedback?colour=red", None, 400, 'Could not find field "colour"'),
    ("GET", "/feedback?page_size=5000", None, 400, "page_size: must be between 1 and 1000"),
    ("GET", "/feedback?page_token=abc", None, 400, "page_token"),
    ("GET", "/no-such-path", None, 404, "Could not resolve /no-such-path"),
    ("DELETE", "/feedback", None, 404, "Could not resolve /feedback"),
    ("GET", "/predict", None, 404, "Could not resolve /predict"),
    ("PUT", "/models", "{}", 404, "Could not resolve /models"),
    ("POST", "/predict", '{"text": ""}', 400, "text: must not be empty"),
    ("POST", "/predict", f'{{"text": "{OVERSIZED}"}}', 400, "the limit is 5000"),
    ("POST", "/predict/batch", '{"texts": []}', 400, "texts: must hold at least one text"),
    ("POST", "/predict/batch", '{"texts": ["ok", " "]}', 400, "texts[1]: must not be empty"),
    ("POST", "/models/v1/activate", "{}", 404, "model version 'v1' does not exist"),
    ("POST", "/models/rollback", "{}", 400, "no earlier model version"),
    ("GET", "/models/latest", None, 400, "is not a version name"),
    ("POST", "/model-init/bootstrap", '{"preset": "huge"}', 400, "'huge' is not one of"),
    # Found by fuzzing: bytes that are not UTF-8 in a path parameter were a 500 quoting
    # the decoder's exception; a 70,000-character version a 503 quoting grpc's transport
    # error; a digit int() refuses ('²') a 500.
    ("GET", "/models/%ED%A0%80", None, 400, "a string field is not valid UTF-8"),
    ("GET", "/model-init/status/%ED%A0%80", None, 400, "a string field is not valid UTF-8"),
    ("GET", "/predictions/%ED%A0%80", None, 400, "a string field is not valid UTF-8"),
    ("POST", "/evaluate", f'{{"model_version": "{"x" * 70000}"}}', 400, "is not a version name"),
    ("GET", "/models/v%C2%B2", None, 400, "is not a version name"),
    ("GET", "/feedback?page_token=%C2%B2", None, 400, "page_token"),
    ("GET", "/feedback?page_token=99999999999999999999999", None, 400, "page_token"),
    (
        "POST",
        "/models",
        '{"path": "/m.tar.gz", "test_metrics": {"confusion_matrix": [{"a": true}]}}',
        400,
        "confusion_matrix: must be a list of rows of whole, non-negative counts",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "says"), CASES)
def test_bad_input_is_rejected_and_changes_nothing(
    mesh: RunningMesh,
    http: httpx.Client,
    method: str,
    path: str,
    body: str | None,
    status: int,
    says: str,
) -> None:
    before = http.get("/feedback/stats").json()
    response = http.request(
        method, path, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    # Whoever answered (a service or Envoy itself), the error is JSON in one shape.
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert says in error["error"]
    assert error["detail"] and error["message"] == error["error"]
    if status == 400 and error.get("details"):
        violation = error["details"][0]
        assert violation["@type"] == "type.googleapis.com/google.rpc.BadRequest"
        assert violation["field_violations"][0]["field"]
    assert http.get("/feedback/stats").json() == before


def test_invalid_argument_over_grpc_carries_field_violations(mesh: RunningMesh) -> None:
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from sentiloop.v1 import feedback_pb2 as pb
    from sentiloop.v1 import feedback_pb2_grpc as pb_grpc

    with mesh.operator_channel(mesh.address("feedback")) as channel:
        stub = pb_grpc.FeedbackServiceStub(channel)
        try:
            stub.SubmitFeedback(pb.SubmitFeedbackRequest(text="", user_label="bad"), timeout=5)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            status = rpc_status.from_call(error)
            assert status is not None
            bad_request = error_details_pb2.BadRequest()
            assert status.details[0].Unpack(bad_request)
            fields = {v.field for v in bad_request.field_violations}
            assert fields == {"text", "user_label"}
        else:
            raise AssertionError("invalid feedback was accepted")
