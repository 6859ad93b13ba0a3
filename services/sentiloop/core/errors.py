"""Domain errors. Domain code raises these; the server runner maps them to gRPC
status codes in one place (``sentiloop.core.server``), so no domain module imports grpc."""

from __future__ import annotations


class SentiloopError(Exception):
    """Base of every error that is the caller's to fix or to wait out."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SentiloopError):
    """The request is malformed; ``violations`` maps field names to what is wrong."""

    def __init__(self, violations: dict[str, str]) -> None:
        self.violations = dict(violations)
        super().__init__("; ".join(f"{field}: {why}" for field, why in self.violations.items()))


class NotFound(SentiloopError):
    pass


class FailedPrecondition(SentiloopError):
    pass


class AlreadyExists(SentiloopError):
    pass


class Unavailable(SentiloopError):
    pass


class ResourceExhausted(SentiloopError):
    """Too much work is waiting already: the caller should retry later (HTTP 429)."""


class Internal(SentiloopError):
    """The service cannot do what it should, through no fault of the caller (HTTP 500)."""


class Unauthenticated(SentiloopError):
    """No credential, or one that is not valid (HTTP 401)."""


class PermissionDenied(SentiloopError):
    """A valid credential whose role may not make this call (HTTP 403)."""
