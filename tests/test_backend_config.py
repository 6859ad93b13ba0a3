"""Backends are chosen by configuration, and a misconfigured one stops the start with a
message naming what is missing, not a failure at the first request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sentiloop.core.config import env_name
from sentiloop.testing import free_port, start_mesh

AWS_VARIABLES = ("SENTILOOP_S3_BUCKET", "SENTILOOP_SAGEMAKER_ROLE_ARN", "SENTILOOP_OBJECT_STORE")


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(AWS_VARIABLES)}
    return env | {"SENTILOOP_DATA_DIR": str(data_dir)} | extra


@pytest.mark.parametrize(
    ("service", "variables", "says"),
    [
        ("feedback", {"SENTILOOP_OBJECT_STORE": "s3"}, "SENTILOOP_S3_BUCKET is not set"),
        (
            "feedback",
            {"SENTILOOP_OBJECT_STORE": "ftp"},
            "SENTILOOP_OBJECT_STORE='ftp': Input should be 'local' or 's3'",
        ),
        (
            "model_init",
            {"SENTILOOP_TRAINING_BACKEND": "sagemaker"},
            "needs SENTILOOP_OBJECT_STORE=s3",
        ),
        (
            "inference",
            {"SENTILOOP_ENDPOINT_BACKEND": "sagemaker"},
            "SENTILOOP_SAGEMAKER_ROLE_ARN is not set",
        ),
        (
            "model_init",
            {"SENTILOOP_TRAINING_BACKEND": "batch"},
            "SENTILOOP_TRAINING_BACKEND='batch': Input should be 'local' or 'sagemaker'",
        ),
    ],
)
def test_a_misconfigured_service_refuses_to_start(
    tmp_path: Path, service: str, variables: dict[str, str], says: str
) -> None:
    env = clean_env(tmp_path, **variables) | {env_name(service, "PORT"): str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "sentiloop.serve", service],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert says in result.stderr


def test_up_with_the_aws_backend_and_no_configuration_says_what_is_missing(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path, SENTILOOP_ENVOY_PORT=str(free_port()), SENTILOOP_ENVOY_ADMIN_PORT=str(free_port())
    )
    for name in (
        "inference",
        "feedback",
        "registry",
        "evaluation",
        "retraining",
        "notification",
        "model_init",
    ):
        env[env_name(name, "PORT")] = str(free_port())
    result = subprocess.run(
        [sys.executable, "-m", "sentiloop.cli", "up", "--backend", "aws", "--timeout", "60"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "configuration error" in result.stdout
    assert "did not become healthy" in result.stdout


def test_the_local_backends_are_the_default(tmp_path: Path) -> None:
    mesh = start_mesh(tmp_path)
    try:
        import httpx

        status = httpx.get(f"{mesh.url}/model-init/endpoint-status").json()
        assert status["backend"] == "local"
        assert (tmp_path / "objects").is_dir()
    finally:
        assert mesh.stop() == 0
