"""The model served by a SageMaker endpoint running the very same inference.py, driven
through a boto3 client handed in by the caller. Every boto3 call blocks, so the async methods
run them in a worker thread."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from sentiloop.aws.config import (
    VERSION_TAG,
    SageMakerConfig,
)
from sentiloop.aws.errors import AWSError, already_exists, error_code, error_message, is_missing
from sentiloop.core.errors import Unavailable
from sentiloop.core.training import (
    EndpointStatus,
)
from sentiloop.core.vocabulary import EndpointState

log = logging.getLogger("sentiloop.sagemaker")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "x"


def _tags(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in tags or []}


@dataclass(frozen=True)
class EndpointView:
    """What describe_endpoint says, with the model versions its configurations carry."""

    status: str  # SageMaker's EndpointStatus, or NotDeployed
    config_name: str = ""
    model_version: str = ""  # what the endpoint's configuration serves
    pending_version: str = ""  # what an update in progress will serve
    failure_reason: str = ""
    created: datetime | None = None
    last_modified: datetime | None = None
    variants: dict[str, str] = field(default_factory=dict)  # variant name -> version


@dataclass(frozen=True)
class DeploymentNames:
    model: str
    endpoint_config: str
    variant: str


_UPDATING = (EndpointState.UPDATING, "SystemUpdating", "RollingBack")
_BUSY = (EndpointState.CREATING, *_UPDATING)

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_POLICY = "invocations-per-instance"
SCALE_IN_COOLDOWN = 300  # seconds: scale in slowly, a burst often comes back
SCALE_OUT_COOLDOWN = 60


def _not_registered(error: BaseException) -> bool:
    # AWS answers ObjectNotFoundException; moto a ValidationException.
    text = error_message(error).lower()
    return error_code(error) == "ObjectNotFoundException" or (
        "no scalable target" in text or "no scaling policy" in text
    )


class SageMakerEndpoint:
    """The serving endpoint: one SageMaker model and endpoint configuration per version
    (named ``<endpoint>-<version>-<hash>``), the version recorded as the configuration's
    ``sentiloop:model-version`` tag and in the name of its one production variant.

    With an ``autoscaling_client`` (application-autoscaling; what the deploying service
    passes) the variant serving the endpoint is kept autoscaled between the configured
    minimum and maximum instances, by invocations per instance."""

    def __init__(
        self,
        config: SageMakerConfig,
        sagemaker_client: Any,
        settle_timeout: float = 1800.0,
        autoscaling_client: Any = None,
    ) -> None:
        self.name = config.endpoint_name
        self._config = config
        self._client = sagemaker_client
        self._autoscaling = autoscaling_client
        self._settle_timeout = settle_timeout
        self._config_versions: dict[str, tuple[str, tuple[str, ...]]] = {}

    # ---- names and requests

    def names(self, version: str, artifact: str) -> DeploymentNames:
        parts = [
            version,
            artifact,
            self._config.inference_image,
            self._config.inference_instance_type,
            json.dumps(self._config.inference_environment, sort_keys=True),
        ]
        if self._config.endpoint_min_instances != 1:
            # The instance count is the configuration's too; left out at 1, so that the
            # configurations deployed before it was a setting keep their names.
            parts.append(f"instances={self._config.endpoint_min_instances}")
        digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]
        stem = f"{self.name}-{_slug(version)}"[: 63 - 9].rstrip("-")
        name = f"{stem}-{digest}"
        return DeploymentNames(name, name, f"model-{_slug(version)}"[:63].rstrip("-"))

    def _create(self, call: str, **request: Any) -> None:
        try:
            getattr(self._client, call)(**request)
        except ClientError as error:
            if not already_exists(error):  # the same version deployed before: reuse it
                raise

    def _deploy(self, version: str, artifact: str) -> None:
        names = self.names(version, artifact)
        tags = [{"Key": VERSION_TAG, "Value": version}]
        self._create(
            "create_model",
            ModelName=names.model,
            PrimaryContainer={
                "Image": self._config.inference_image,
                "ModelDataUrl": artifact,
                "Environment": self._config.inference_environment,
            },
            ExecutionRoleArn=self._config.role_arn,
            Tags=tags,
        )
        self._create(
            "create_endpoint_config",
            EndpointConfigName=names.endpoint_config,
            ProductionVariants=[
                {
                    "VariantName": names.variant,
                    "ModelName": names.model,
                    "InitialInstanceCount": self._config.endpoint_min_instances,
                    "InstanceType": self._config.inference_instance_type,
                    "InitialVariantWeight": 1.0,
                }
            ],
            Tags=tags,
        )
        current = self._settled()
        if current is None:
            self._client.create_endpoint(
                EndpointName=self.name, EndpointConfigName=names.endpoint_config
            )
        elif current["EndpointConfigName"] == names.endpoint_config and current[
            "EndpointStatus"
        ] not in ("Failed", "UpdateRollbackFailed"):
            return  # already serving it
        elif current["EndpointStatus"] == "Failed":
            # A creation that failed leaves an endpoint that cannot be updated.
            self._client.delete_endpoint(EndpointName=self.name)
            self._wait(lambda described: described is None, "to be deleted")
            self._client.create_endpoint(
                EndpointName=self.name, EndpointConfigName=names.endpoint_config
            )
        else:
            # SageMaker refuses some updates of an autoscaled variant, and the new
            # configuration's variant replaces it anyway. Should that fail, the update is
            # still tried: SageMaker's own answer says more.
            try:
                self._deregister(
                    str(variant["VariantName"]) for variant in current.get("ProductionVariants", [])
                )
            except AWSError as error:
                log.warning(
                    "endpoint %s: taking the serving variant off autoscaling failed: %s",
                    self.name,
                    error_message(error),
                )
            self._client.update_endpoint(
                EndpointName=self.name, EndpointConfigName=names.endpoint_config
            )
        log.info("endpoint %s: deploying %s (%s)", self.name, version, names.endpoint_config)

    # ---- autoscaling

    def _resource_id(self, variant: str) -> str:
        return f"endpoint/{self.name}/variant/{variant}"

    def _deregister(self, variants: Iterable[str]) -> None:
        """Stops autoscaling ``variants``: the policy (and with it its alarms), then the
        scalable target; either may be missing already."""
        if self._autoscaling is None:
            return
        for variant in variants:
            target = {
                "ServiceNamespace": "sagemaker",
                "ResourceId": self._resource_id(variant),
                "ScalableDimension": SCALABLE_DIMENSION,
            }
            try:
                # AWS deletes a target's policies with it; explicitly, the policy (and its
                # alarms) goes wherever that does not hold (moto).
                self._autoscaling.delete_scaling_policy(PolicyName=SCALING_POLICY, **target)
            except ClientError as error:
                if not _not_registered(error):
                    raise
            try:
                self._autoscaling.deregister_scalable_target(**target)
            except ClientError as error:
                if not _not_registered(error):
                    raise
            else:
                log.info("endpoint %s: variant %s no longer autoscaled", self.name, variant)

    def _autoscale(self, variants: Iterable[str]) -> None:
        """Registers the variants the endpoint serves as scalable targets, with the
        target-tracking policy; without autoscaling configured, deregisters any a
        configuration before left. Both are idempotent: every settled deploy repeats
        them, so changed settings apply on the next deploy, even of the same version."""
        if self._autoscaling is None:
            return
        config = self._config
        if not config.autoscaled:
            self._deregister(variants)
            return
        for variant in variants:
            resource_id = self._resource_id(variant)
            self._autoscaling.register_scalable_target(
                ServiceNamespace="sagemaker",
                ResourceId=resource_id,
                ScalableDimension=SCALABLE_DIMENSION,
                MinCapacity=config.endpoint_min_instances,
                MaxCapacity=config.endpoint_max_instances,
            )
            self._autoscaling.put_scaling_policy(
                PolicyName=SCALING_POLICY,
                ServiceNamespace="sagemaker",
                ResourceId=resource_id,
                ScalableDimension=SCALABLE_DIMENSION,
                PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration={
                    "TargetValue": config.invocations_per_instance,
                    "PredefinedMetricSpecification": {
                        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
                    },
                    "ScaleInCooldown": SCALE_IN_COOLDOWN,
                    "ScaleOutCooldown": SCALE_OUT_COOLDOWN,
                },
            )
            log.info(
                "endpoint %s: variant %s autoscaled between %d and %d instances (%g"
                " invocations per instance per minute)",
                self.name,
                variant,
                config.endpoint_min_instances,
                config.endpoint_max_instances,
                config.invocations_per_instance,
            )

    async def _apply_autoscaling(self, view: EndpointView) -> None:
        """Autoscaling for what a settled endpoint serves. Serving goes on without it, so
        a failure (e.g. a role without the permissions) is logged, not raised."""
        try:
            await asyncio.to_thread(self._autoscale, tuple(view.variants))
        except AWSError as error:
            log.warning(
                "endpoint %s: %s failed: %s",
                self.name,
                "autoscaling its variant" if self._config.autoscaled else "removing autoscaling",
                error_message(error),
            )

    # ---- describing

    def _describe_raw(self) -> dict[str, Any] | None:
        try:
            described: dict[str, Any] = self._client.describe_endpoint(EndpointName=self.name)
        except ClientError as error:
            if is_missing(error):
                return None
            raise
        return described

    def _wait(self, done: Any, what: str) -> dict[str, Any] | None:
        deadline = time.monotonic() + self._settle_timeout
        while True:
            described = self._describe_raw()
            if done(described):
                return described
            if time.monotonic() >= deadline:
                raise Unavailable(f"endpoint {self.name} took too long {what}")
            time.sleep(self._config.poll_seconds)

    def _settled(self) -> dict[str, Any] | None:
        """The endpoint once no creation or update is in progress (SageMaker refuses to
        update a busy endpoint); None when there is none."""
        return self._wait(
            lambda d: d is None or d.get("EndpointStatus") not in _BUSY, "to finish its update"
        )

    def _config_version(self, config_name: str) -> tuple[str, tuple[str, ...]]:
        """The version a configuration serves (its tag) and its variant names; cached,
        since configurations never change."""
        if config_name not in self._config_versions:
            described = self._client.describe_endpoint_config(EndpointConfigName=config_name)
            tags = self._client.list_tags(ResourceArn=described["EndpointConfigArn"])
            variants = tuple(v["VariantName"] for v in described.get("ProductionVariants", []))
            self._config_versions[config_name] = (
                _tags(tags.get("Tags")).get(VERSION_TAG, ""),
                variants,
            )
        return self._config_versions[config_name]

    def describe(self) -> EndpointView:
        """The endpoint as SageMaker reports it (blocking; raises AWS errors)."""
        described = self._describe_raw()
        if described is None:
            return EndpointView(EndpointState.NOT_DEPLOYED)
        config_name = str(described.get("EndpointConfigName", ""))
        version, variants = self._config_version(config_name) if config_name else ("", ())
        mapping = dict.fromkeys(variants, version)
        pending_version = ""
        pending = (described.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
        if pending and pending != config_name:
            pending_version, pending_variants = self._config_version(str(pending))
            mapping = dict.fromkeys(pending_variants, pending_version) | mapping
        created = described.get("CreationTime")
        modified = described.get("LastModifiedTime")
        return EndpointView(
            status=str(described.get("EndpointStatus", "")),
            config_name=config_name,
            model_version=version,
            pending_version=pending_version,
            failure_reason=str(described.get("FailureReason") or ""),
            created=created if isinstance(created, datetime) else None,
            last_modified=modified if isinstance(modified, datetime) else None,
            variants=mapping,
        )

    # ---- EndpointPort

    async def deploy(self, version: str, artifact: str) -> None:
        try:
            await asyncio.to_thread(self._deploy, version, artifact)
        except AWSError as error:
            raise Unavailable(
                f"deploying {version} to SageMaker endpoint {self.name} failed:"
                f" {error_message(error)}"
            ) from error

    estimated_time = "5-10 minutes"  # SageMaker's usual time to create or update an endpoint

    def model_name(self, version: str, artifact: str) -> str:
        return self.names(version, artifact).model

    @staticmethod
    def endpoint_status(view: EndpointView) -> EndpointStatus:
        if view.status == EndpointState.NOT_DEPLOYED:
            return EndpointStatus(EndpointState.NOT_DEPLOYED)
        status, version, reason = view.status, view.model_version, view.failure_reason
        if status == EndpointState.CREATING:
            version, reason = "", ""
        elif status in _UPDATING:
            status, reason = EndpointState.UPDATING, ""
        elif status in ("Failed", "UpdateRollbackFailed"):
            status, reason = "Failed", reason or f"endpoint is {status}"
        elif status != EndpointState.IN_SERVICE:
            status, reason = "Unknown", f"endpoint is {status}"
        return EndpointStatus(status, version, reason, view.created, view.last_modified)

    async def status(self) -> EndpointStatus:
        try:
            view = await asyncio.to_thread(self.describe)
        except AWSError as error:
            return EndpointStatus("Unknown", failure_reason=f"SageMaker: {error_message(error)}")
        return self.endpoint_status(view)

    async def wait_in_service(self, version: str, timeout: float) -> EndpointStatus:
        deadline = time.monotonic() + timeout
        while True:
            try:
                view: EndpointView | None = await asyncio.to_thread(self.describe)
            except AWSError as error:
                log.warning("describing endpoint %s failed: %s", self.name, error)
                view = None
            if view is not None:
                settled = view.status not in _BUSY and not view.pending_version
                if (
                    view.status == EndpointState.IN_SERVICE
                    and view.model_version == version
                    and settled
                ):
                    await self._apply_autoscaling(view)
                    return EndpointStatus(EndpointState.IN_SERVICE, version)
                if view.status in ("Failed", "UpdateRollbackFailed"):
                    return self.endpoint_status(view)
                if view.status == EndpointState.IN_SERVICE and settled and view.failure_reason:
                    # The update failed and SageMaker rolled back to the earlier version,
                    # whose autoscaling the update had taken away.
                    await self._apply_autoscaling(view)
                    return EndpointStatus("Failed", view.model_version, view.failure_reason)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return await self.status()
            await asyncio.sleep(min(self._config.poll_seconds, remaining))
