"""What AWS calls raise, and how to read it."""

from __future__ import annotations

from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
)

AWSError: tuple[type[BaseException], ...] = (ClientError, BotoCoreError)
"""What a boto3 call raises when AWS (or the way to it) fails."""


def error_code(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def error_message(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        message = response.get("Error", {}).get("Message", "")
        if message:
            return f"{error_code(error)}: {message}"
    return str(error) or type(error).__name__


def is_missing(error: BaseException) -> bool:
    """SageMaker answers ValidationException "Could not find ..." for a missing resource."""
    text = error_message(error).lower()
    return error_code(error) in ("ValidationException", "ResourceNotFound") and (
        "could not find" in text or "not found" in text or "does not exist" in text
    )


def already_exists(error: BaseException) -> bool:
    return error_code(error) == "ResourceInUse" or "already exist" in error_message(error).lower()
