"""A mirror of the registry's model versions in SageMaker's Model Registry: one model
package group, one model package per version, approved when the promotion gate let the
version through. The registry's own store stays the source of truth.

Blocking (boto3): call it from a worker thread."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from sentiloop.aws.config import SageMakerConfig
from sentiloop.aws.errors import is_missing

log = logging.getLogger("sentiloop.registry")

APPROVED, REJECTED, PENDING = "Approved", "Rejected", "PendingManualApproval"


def approval_status(gate_decision: str) -> str:
    """promoted / forced / active -> Approved, rejected -> Rejected, else pending."""
    decision = gate_decision.strip().lower()
    if decision in ("promoted", "forced", "active"):
        return APPROVED
    if decision == "rejected":
        return REJECTED
    return PENDING


def _number(metrics: Mapping[str, Any], name: str) -> str:
    value = metrics.get(name)
    return "" if value is None else f"{float(value):.6f}"


class ModelPackageMirror:
    def __init__(self, config: SageMakerConfig, sagemaker_client: Any) -> None:
        self._config = config
        self._client = sagemaker_client
        self.group = config.model_package_group

    def ensure_group(self) -> str:
        """The group's ARN, creating the group when it does not exist yet."""
        try:
            described = self._client.describe_model_package_group(ModelPackageGroupName=self.group)
            return str(described["ModelPackageGroupArn"])
        except ClientError as error:
            if not is_missing(error):
                raise
        answer = self._client.create_model_package_group(
            ModelPackageGroupName=self.group,
            ModelPackageGroupDescription="Sentiloop sentiment models (mirror of its registry)",
        )
        log.info("created model package group %s", self.group)
        return str(answer["ModelPackageGroupArn"])

    def register(
        self,
        version: str,
        artifact: str,
        image: str,
        metrics: Mapping[str, Any],
        gate_decision: str,
    ) -> str:
        """Registers ``version`` (its model.tar.gz ``artifact`` served by ``image``, "" for
        the configured inference image) and returns the model package's ARN.

        ``metrics`` are one split's (the registry's test metrics: ``accuracy``,
        ``macro_f1``); ``gate_decision`` is promoted / forced / rejected / active or ""."""
        image = image or self._config.inference_image
        token = hashlib.sha256(f"{self.group}\0{version}\0{artifact}".encode()).hexdigest()[:32]
        answer = self._client.create_model_package(
            ModelPackageGroupName=self.group,
            ModelPackageDescription=f"Sentiloop model version {version}",
            # Idempotent: registering the same version again returns the same package.
            ClientToken=token,
            InferenceSpecification={
                "Containers": [
                    {
                        "Image": image,
                        "ModelDataUrl": artifact,
                        "Environment": self._config.inference_environment,
                    }
                ],
                "SupportedContentTypes": ["application/json"],
                "SupportedResponseMIMETypes": ["application/json"],
                "SupportedRealtimeInferenceInstanceTypes": [self._config.inference_instance_type],
            },
            ModelApprovalStatus=approval_status(gate_decision),
            CustomerMetadataProperties={
                key: value
                for key, value in (
                    ("version", version),
                    ("accuracy", _number(metrics, "accuracy")),
                    ("macro_f1", _number(metrics, "macro_f1")),
                    ("gate_decision", gate_decision or "none"),
                )
                if value
            },
        )
        return str(answer["ModelPackageArn"])

    def find(self, version: str) -> str | None:
        """The ARN of ``version``'s package (newest first), or None."""
        pages = self._client.get_paginator("list_model_packages").paginate(
            ModelPackageGroupName=self.group, SortBy="CreationTime", SortOrder="Descending"
        )
        for page in pages:
            for summary in page.get("ModelPackageSummaryList", []):
                arn = str(summary["ModelPackageArn"])
                described = self._client.describe_model_package(ModelPackageName=arn)
                if (described.get("CustomerMetadataProperties") or {}).get("version") == version:
                    return arn
        return None

    def approve_active(self, version: str, reason: str) -> None:
        """Marks the version that now serves as Approved (after an activation or rollback)."""
        arn = self.find(version)
        if arn is None:
            log.warning("no model package for %s in group %s", version, self.group)
            return
        self.set_approval(arn, "active", reason)

    def set_approval(self, package_arn: str, gate_decision: str, description: str = "") -> None:
        """Changes a package's approval (e.g. a version activated or rolled back later).
        The metadata is sent again: some implementations drop what is not resent."""
        described = self._client.describe_model_package(ModelPackageName=package_arn)
        request: dict[str, Any] = {
            "ModelPackageArn": package_arn,
            "ModelApprovalStatus": approval_status(gate_decision),
        }
        metadata = dict(described.get("CustomerMetadataProperties") or {})
        if metadata:
            metadata["gate_decision"] = gate_decision or "none"
            request["CustomerMetadataProperties"] = metadata
        if description:
            request["ApprovalDescription"] = description
        self._client.update_model_package(**request)
