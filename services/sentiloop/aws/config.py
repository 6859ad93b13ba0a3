"""AWS configuration: which backends run where (local, the default, or AWS, chosen per
backend), the boto3 clients the AWS ones use, and the SageMaker settings, checked at start."""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from sentiloop.core.config import Settings

# What `sentiloop up --backend aws` selects (each can still be set on its own).
AWS_BACKENDS = {
    "SENTILOOP_OBJECT_STORE": "s3",
    "SENTILOOP_TRAINING_BACKEND": "sagemaker",
    "SENTILOOP_ENDPOINT_BACKEND": "sagemaker",
}


def sagemaker_client(service: str = "sagemaker") -> Any:
    """boto3 client for SageMaker (or sagemaker-runtime, application-autoscaling), with
    retries and backoff; region and endpoint come from the usual AWS variables."""
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


log = logging.getLogger("sentiloop.sagemaker")

VERSION_TAG = "sentiloop:model-version"
SOURCEDIR_FILES = ("train.py", "inference.py", "requirements.txt")
INIT_CHANNEL = "init"
INIT_CHANNEL_DIR = "/opt/ml/input/data/init"
# The serving containers load inference.py from the model: train.py writes it to
# code/inference.py inside model.tar.gz, which is unpacked into /opt/ml/model.
INFERENCE_ENVIRONMENT: dict[str, str] = {
    "SAGEMAKER_PROGRAM": "inference.py",
    "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
    "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
}
# Image lookup through the optional sagemaker SDK (HuggingFace PyTorch containers).
SDK_IMAGE_VERSIONS = {
    "training": {"version": "4.55.0", "base": "pytorch2.7.1", "py": "py312"},
    "inference": {"version": "4.51.3", "base": "pytorch2.6.0", "py": "py312"},
}

_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")


@dataclass(frozen=True)
class SageMakerConfig:
    role_arn: str
    training_image: str
    inference_image: str
    instance_type: str = "ml.g5.xlarge"
    inference_instance_type: str = "ml.m5.large"
    max_runtime_seconds: int = 3600
    endpoint_name: str = "sentiloop"
    model_package_group: str = "sentiloop"
    poll_seconds: float = 15.0
    volume_size_gb: int = 30
    inference_engine: str = "auto"  # SENTILOOP_INFERENCE_ENGINE, for the endpoint too
    endpoint_min_instances: int = 1
    endpoint_max_instances: int = 1  # above the minimum: autoscaled
    invocations_per_instance: float = 100.0  # per minute, the autoscaling target

    @property
    def autoscaled(self) -> bool:
        return self.endpoint_max_instances > self.endpoint_min_instances

    @property
    def inference_environment(self) -> dict[str, str]:
        """The serving container's environment: inference.py from the artifact, and the
        engine choice the in-process InferenceService makes (read by its model_fn)."""
        return {**INFERENCE_ENVIRONMENT, "SENTILOOP_INFERENCE_ENGINE": self.inference_engine}

    @classmethod
    def from_settings(cls, settings: Settings) -> SageMakerConfig:
        """Checks what only a SageMaker backend needs; every problem in one SystemExit."""
        problems: list[str] = []
        role_arn = settings.sagemaker_role_arn or ""
        if not role_arn:
            problems.append("SENTILOOP_SAGEMAKER_ROLE_ARN is not set (the IAM role SageMaker uses)")
        elif not _ROLE_ARN.fullmatch(role_arn):
            problems.append(f"SENTILOOP_SAGEMAKER_ROLE_ARN={role_arn!r} is not an IAM role ARN")
        instance_types = {
            "training": settings.sagemaker_instance_type,
            "inference": settings.sagemaker_inference_instance_type,
        }
        configured = {
            "training": settings.sagemaker_training_image,
            "inference": settings.sagemaker_inference_image,
        }
        images: dict[str, str] = {}
        for scope, instance in instance_types.items():
            images[scope] = configured[scope] or sdk_image_uri(
                scope, settings.aws_region or "", instance
            )
            if not images[scope]:
                problems.append(
                    f"SENTILOOP_SAGEMAKER_{scope.upper()}_IMAGE is not set (the HuggingFace"
                    f" PyTorch {scope} image URI; the optional sagemaker SDK could not provide"
                    " one)"
                )
        for name, value in (
            ("INSTANCE_TYPE", settings.sagemaker_instance_type),
            ("INFERENCE_INSTANCE_TYPE", settings.sagemaker_inference_instance_type),
        ):
            if not value.startswith("ml."):
                problems.append(f"SENTILOOP_SAGEMAKER_{name}={value!r} is not an ml.* type")
        for name, value in (
            ("ENDPOINT_NAME", settings.sagemaker_endpoint_name),
            ("MODEL_PACKAGE_GROUP", settings.sagemaker_model_package_group),
        ):
            if not _NAME.fullmatch(value):
                problems.append(
                    f"SENTILOOP_SAGEMAKER_{name}={value!r} must be 1-63 letters, digits and"
                    " hyphens, starting with a letter or digit"
                )
        if problems:
            raise SystemExit("configuration error: " + "; ".join(problems))
        return cls(
            role_arn=role_arn,
            training_image=images["training"],
            inference_image=images["inference"],
            instance_type=settings.sagemaker_instance_type,
            inference_instance_type=settings.sagemaker_inference_instance_type,
            max_runtime_seconds=settings.sagemaker_max_runtime_seconds,
            endpoint_name=settings.sagemaker_endpoint_name,
            model_package_group=settings.sagemaker_model_package_group,
            poll_seconds=settings.sagemaker_poll_seconds,
            inference_engine=settings.inference_engine,
            endpoint_min_instances=settings.sagemaker_endpoint_min_instances,
            endpoint_max_instances=settings.sagemaker_endpoint_max_instances,
            invocations_per_instance=settings.sagemaker_endpoint_invocations_per_instance,
        )


def sdk_image_uri(scope: str, region: str, instance_type: str) -> str:
    """The HuggingFace PyTorch image from the optional sagemaker SDK's bundled tables,
    or "" when the SDK is not installed or cannot answer."""
    if not region:
        return ""
    try:
        image_uris: Any = importlib.import_module("sagemaker.core.image_uris")
    except ImportError:
        return ""
    versions = SDK_IMAGE_VERSIONS[scope]
    try:
        return str(
            image_uris.retrieve(
                framework="huggingface",
                region=region,
                version=versions["version"],
                base_framework_version=versions["base"],
                py_version=versions["py"],
                instance_type=instance_type,
                image_scope=scope,
            )
        )
    except Exception as error:  # the SDK raises ValueError and friends for unknown combos
        log.warning("the sagemaker SDK found no %s image: %s", scope, error)
        return ""
