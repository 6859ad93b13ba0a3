"""Which backends run where: local (the default) or AWS, chosen per backend by
configuration, and the boto3 clients the AWS ones use."""

from __future__ import annotations

import os
from typing import Any

BACKEND_VARIABLES = {
    "SENTILOOP_OBJECT_STORE": ("local", "s3"),
    "SENTILOOP_TRAINING_BACKEND": ("local", "sagemaker"),
    "SENTILOOP_ENDPOINT_BACKEND": ("local", "sagemaker"),
}
# What `sentiloop up --backend aws` selects (each can still be set on its own).
AWS_BACKENDS = {
    "SENTILOOP_OBJECT_STORE": "s3",
    "SENTILOOP_TRAINING_BACKEND": "sagemaker",
    "SENTILOOP_ENDPOINT_BACKEND": "sagemaker",
}


def backend(variable: str) -> str:
    value = os.environ.get(variable, "local").strip().lower() or "local"
    allowed = BACKEND_VARIABLES[variable]
    if value not in allowed:
        raise SystemExit(
            f"configuration error: {variable}={value!r} is not one of {', '.join(allowed)}"
        )
    return value


def sagemaker_client(service: str = "sagemaker") -> Any:
    """boto3 client for SageMaker (or sagemaker-runtime), with retries and backoff;
    region and endpoint come from the usual AWS variables."""
    import boto3
    from botocore.config import Config  # type: ignore[import-untyped]

    return boto3.client(
        service, config=Config(retries={"mode": "adaptive", "max_attempts": 8}, read_timeout=70)
    )


def require_remote_store(store: Any, what: str) -> None:
    from sentiloop.core.objectstore import LocalObjectStore

    if isinstance(store, LocalObjectStore):
        raise SystemExit(
            f"configuration error: {what} needs SENTILOOP_OBJECT_STORE=s3 (SageMaker cannot"
            " read a local folder)"
        )
