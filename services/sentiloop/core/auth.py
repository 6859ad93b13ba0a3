"""Who may call what. Three roles, by bearer token (``authorization: Bearer TOKEN``):

- public: predictions, feedback, health and read-only listings; open, unless an API key is
  configured (then the key, or any stronger credential, is needed);
- operator: every call that changes what is trained, registered, served or exported;
- service: what the services present to each other; it may do what an operator may, and
  it alone may publish events.

Bearer tokens rather than JWTs: one deployment checks its own credentials, with no identity
provider to federate with, so a signed token would add a signing key, expiry and a library
for nothing a constant-time comparison of a random 256-bit token does not already give;
rotating one is replacing a secret. The check runs in every service (the runner's server
interceptor), so the direct gRPC ports are as closed as Envoy's.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc
from pydantic import SecretStr

from sentiloop.core.config import Settings
from sentiloop.core.errors import PermissionDenied, Unauthenticated


class Role(StrEnum):
    PUBLIC = "public"
    OPERATOR = "operator"
    SERVICE = "service"


_P = "/sentiloop.v1."
# Every RPC of the contract and the role it needs. A method missing here (a new RPC) needs
# the operator: closed until someone decides otherwise (tests/test_auth.py checks that the
# table names every RPC of the protos).
METHOD_ROLES: dict[str, Role] = {
    f"{_P}InferenceService/Predict": Role.PUBLIC,
    f"{_P}InferenceService/PredictBatch": Role.PUBLIC,
    f"{_P}InferenceService/GetPrediction": Role.PUBLIC,
    f"{_P}InferenceService/GetServingStatus": Role.PUBLIC,
    # Every text users sent, in bulk: for the services (the labelling queue, drift).
    f"{_P}InferenceService/ListRecentPredictions": Role.SERVICE,
    f"{_P}InferenceService/GetDrift": Role.PUBLIC,
    # A shadow changes what the serving process runs (a second model beside the served one).
    f"{_P}InferenceService/StartShadow": Role.OPERATOR,
    f"{_P}InferenceService/StopShadow": Role.OPERATOR,
    f"{_P}InferenceService/GetShadowReport": Role.PUBLIC,
    f"{_P}FeedbackService/SubmitFeedback": Role.PUBLIC,
    f"{_P}FeedbackService/ListFeedback": Role.PUBLIC,
    f"{_P}FeedbackService/GetFeedbackStats": Role.PUBLIC,
    # Anyone who may give feedback may ask what to label.
    f"{_P}FeedbackService/ListLabelRequests": Role.PUBLIC,
    f"{_P}FeedbackService/ExportFeedback": Role.OPERATOR,
    f"{_P}MeshHealthService/GetMeshHealth": Role.PUBLIC,
    # Counts of what was predicted and labelled, per version: the operator's (and a
    # Prometheus given the operator token).
    f"{_P}MeshHealthService/GetMetrics": Role.OPERATOR,
    f"{_P}EvaluationService/Evaluate": Role.PUBLIC,
    f"{_P}EvaluationService/CompareModels": Role.PUBLIC,
    f"{_P}EvaluationService/ListEvaluations": Role.PUBLIC,
    f"{_P}ModelInitService/Bootstrap": Role.OPERATOR,
    f"{_P}ModelInitService/StartTrainingJob": Role.OPERATOR,
    f"{_P}ModelInitService/StopTrainingJob": Role.OPERATOR,
    f"{_P}ModelInitService/Deploy": Role.OPERATOR,
    f"{_P}ModelInitService/ImportDataset": Role.OPERATOR,
    f"{_P}ModelInitService/UploadDataset": Role.OPERATOR,
    f"{_P}ModelInitService/GetTrainingStatus": Role.PUBLIC,
    f"{_P}ModelInitService/WatchTrainingJob": Role.PUBLIC,
    f"{_P}ModelInitService/ListTrainingJobs": Role.PUBLIC,
    f"{_P}ModelInitService/ListDatasets": Role.PUBLIC,
    f"{_P}ModelInitService/GetDataset": Role.PUBLIC,
    f"{_P}ModelInitService/GetEndpointStatus": Role.PUBLIC,
    f"{_P}ModelRegistryService/ListModels": Role.PUBLIC,
    f"{_P}ModelRegistryService/GetModel": Role.PUBLIC,
    f"{_P}ModelRegistryService/ListActivations": Role.PUBLIC,
    f"{_P}ModelRegistryService/RegisterModel": Role.OPERATOR,
    f"{_P}ModelRegistryService/ActivateModel": Role.OPERATOR,
    f"{_P}ModelRegistryService/Rollback": Role.OPERATOR,
    # The evidence the shadow rule of activation reads: only InferenceService writes it.
    f"{_P}ModelRegistryService/RecordShadowReport": Role.SERVICE,
    f"{_P}RetrainingService/Retrain": Role.OPERATOR,
    f"{_P}RetrainingService/GetPolicy": Role.PUBLIC,
    f"{_P}NotificationService/Publish": Role.SERVICE,
    f"{_P}NotificationService/Subscribe": Role.PUBLIC,
    f"{_P}NotificationService/ListEvents": Role.PUBLIC,
}
# Probes and tools, open even where public calls need the API key: the standard health
# service, reflection (grpcurl's method lists) and the mesh health behind /health.
OPEN_PREFIXES = ("/grpc.health.", "/grpc.reflection.", f"{_P}MeshHealthService/GetMeshHealth")
# Who may call what each role guards.
_ALLOWED: dict[Role, frozenset[Role]] = {
    Role.PUBLIC: frozenset(Role),
    Role.OPERATOR: frozenset({Role.OPERATOR, Role.SERVICE}),
    Role.SERVICE: frozenset({Role.SERVICE}),
}


def read_or_create_token(path: Path) -> str:
    """The token in ``path``, created once (owner-only, 0600) if there is none. Several
    processes may start at once: the file appears whole or not at all (hard link of a
    finished temporary file), and whoever loses the race reads the winner's."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".token-")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    return path.read_text(encoding="utf-8").strip()


def token_path(settings: Settings, role: Role) -> Path:
    return settings.data_dir / "secrets" / f"{role}.token"


def operator_token(settings: Settings) -> str:
    """What a client (the CLI) presents: the configured operator token, else the mesh's
    token file; "" when neither exists (a client never creates one: the call then
    answers 401 saying what it needs)."""
    configured = _configured(settings.operator_token)
    if configured:
        return configured
    path = token_path(settings, Role.OPERATOR)
    return path.read_text(encoding="utf-8").strip() if path.is_file() else ""


def _configured(value: SecretStr | None) -> str:
    return value.get_secret_value().strip() if value is not None else ""


@dataclass(frozen=True)
class Credentials:
    operator: str
    service: str
    api_key: str = ""  # "" leaves public calls open

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        """Configured tokens, else the ones under the data directory (made on first use)."""
        return cls(
            operator=_configured(settings.operator_token)
            or read_or_create_token(token_path(settings, Role.OPERATOR)),
            service=_configured(settings.service_token)
            or read_or_create_token(token_path(settings, Role.SERVICE)),
            api_key=_configured(settings.api_key),
        )

    def role_of(self, token: str) -> Role | None:
        """The role a presented token proves (None: not one of ours)."""
        found = None
        # Every comparison runs, in constant time: the answer's timing says nothing.
        for role, expected in (
            (Role.SERVICE, self.service),
            (Role.OPERATOR, self.operator),
            (Role.PUBLIC, self.api_key),
        ):
            if expected and hmac.compare_digest(token.encode(), expected.encode()):
                found = found or role
        return found

    def authorize(self, method: str, authorization: str) -> Role:
        """The caller's role, or Unauthenticated (no or a wrong credential) or
        PermissionDenied (a credential whose role may not call ``method``)."""
        if method.startswith(OPEN_PREFIXES):
            return Role.PUBLIC
        needed = METHOD_ROLES.get(method, Role.OPERATOR)
        scheme, _, token = authorization.partition(" ")
        if not authorization:
            if needed == Role.PUBLIC and not self.api_key:
                return Role.PUBLIC
            raise Unauthenticated(_missing(needed))
        role = self.role_of(token.strip()) if scheme.lower() == "bearer" else None
        if role is None:
            raise Unauthenticated("the credential is not valid: send Authorization: Bearer TOKEN")
        if role not in _ALLOWED[needed]:
            raise PermissionDenied(f"{method.rsplit('/', 1)[1]} needs the {needed} credential")
        return role


def _missing(needed: Role) -> str:
    if needed == Role.PUBLIC:
        return "this deployment needs an API key: send Authorization: Bearer KEY"
    return f"this call needs the {needed} credential: send Authorization: Bearer TOKEN" + (
        " (the token is in DATA_DIR/secrets/operator.token)" if needed == Role.OPERATOR else ""
    )


class _BearerDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, details: Any, token: str) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = (*(details.metadata or ()), ("authorization", f"Bearer {token}"))
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_BearerDetails(details, self._token), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_BearerDetails(details, self._token), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_BearerDetails(details, self._token), requests)


def bearer_channel(
    address: str, token: str, options: list[tuple[str, Any]] | None = None
) -> grpc.Channel:
    """A blocking channel whose every call presents ``token`` (the CLI's, the tests')."""
    return grpc.intercept_channel(grpc.insecure_channel(address, options=options), _Bearer(token))
