"""The AWS side of ModelInit: training as SageMaker training jobs running the very same
sagemaker_scripts/train.py, and the model served by a SageMaker endpoint running the very
same inference.py. Driven through boto3 clients handed in by the caller (the ``sagemaker``
SDK is an optional extra, used only to look up container image URIs).

Every boto3 call blocks, so the async methods run them in a worker thread."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib
import io
import json
import logging
import math
import os
import re
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
)

from sentiloop.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from sentiloop.core.objectstore import ObjectStore
from sentiloop.core.scripts import load_script, scripts_dir
from sentiloop.model_init.backends import Report, TrainingEvent, looks_like_hub_id
from sentiloop.model_init.jobs import TrainingJob
from sentiloop.model_init.manager import EndpointStatus

log = logging.getLogger("sentiloop.sagemaker")

AWSError: tuple[type[BaseException], ...] = (ClientError, BotoCoreError)
"""What a boto3 call raises when AWS (or the way to it) fails."""

VERSION_TAG = "sentiloop:model-version"
SOURCEDIR_FILES = ("train.py", "inference.py")
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


# --------------------------------------------------------------------------- configuration


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SageMakerConfig:
        """From ``SENTILOOP_SAGEMAKER_*``; every problem is named in one SystemExit."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def text(name: str, default: str = "") -> str:
            return env.get(f"SENTILOOP_SAGEMAKER_{name}", "").strip() or default

        def number(name: str, default: float, kind: type[int] | type[float]) -> Any:
            raw = text(name)
            if not raw:
                return kind(default)
            try:
                value = kind(raw)
            except ValueError:
                value = 0
            if not (math.isfinite(value) and value > 0):
                problems.append(f"SENTILOOP_SAGEMAKER_{name}={raw!r} must be a number > 0")
                return kind(default)
            return value

        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
        instance_type = text("INSTANCE_TYPE", "ml.g5.xlarge")
        inference_instance_type = text("INFERENCE_INSTANCE_TYPE", "ml.m5.large")
        role_arn = text("ROLE_ARN")
        if not role_arn:
            problems.append("SENTILOOP_SAGEMAKER_ROLE_ARN is not set (the IAM role SageMaker uses)")
        elif not _ROLE_ARN.fullmatch(role_arn):
            problems.append(f"SENTILOOP_SAGEMAKER_ROLE_ARN={role_arn!r} is not an IAM role ARN")
        images: dict[str, str] = {}
        for scope, instance in (
            ("training", instance_type),
            ("inference", inference_instance_type),
        ):
            name = f"SENTILOOP_SAGEMAKER_{scope.upper()}_IMAGE"
            images[scope] = text(f"{scope.upper()}_IMAGE") or sdk_image_uri(scope, region, instance)
            if not images[scope]:
                problems.append(
                    f"{name} is not set (the HuggingFace PyTorch {scope} image URI; the optional"
                    " sagemaker SDK could not provide one)"
                )
        for name, value in (
            ("INSTANCE_TYPE", instance_type),
            ("INFERENCE_INSTANCE_TYPE", inference_instance_type),
        ):
            if not value.startswith("ml."):
                problems.append(f"SENTILOOP_SAGEMAKER_{name}={value!r} is not an ml.* type")
        endpoint_name = text("ENDPOINT_NAME", "sentiloop")
        group = text("MODEL_PACKAGE_GROUP", "sentiloop")
        for name, value in (("ENDPOINT_NAME", endpoint_name), ("MODEL_PACKAGE_GROUP", group)):
            if not _NAME.fullmatch(value):
                problems.append(
                    f"SENTILOOP_SAGEMAKER_{name}={value!r} must be 1-63 letters, digits and"
                    " hyphens, starting with a letter or digit"
                )
        config = cls(
            role_arn=role_arn,
            training_image=images["training"],
            inference_image=images["inference"],
            instance_type=instance_type,
            inference_instance_type=inference_instance_type,
            max_runtime_seconds=number("MAX_RUNTIME_SECONDS", 3600, int),
            endpoint_name=endpoint_name,
            model_package_group=group,
            poll_seconds=number("POLL_SECONDS", 15.0, float),
        )
        if problems:
            raise SystemExit("configuration error: " + "; ".join(problems))
        return config


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


# --------------------------------------------------------------------------- AWS errors


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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "x"


def _tags(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in tags or []}


# --------------------------------------------------------------------------- training


def sourcedir_tarball(directory: Path | None = None) -> bytes:
    """sourcedir.tar.gz as the SageMaker SDK builds it: the scripts at the archive's
    root. Byte-identical for identical scripts (no timestamps, owners or modes)."""
    folder = directory or scripts_dir()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in SOURCEDIR_FILES:
            data = (folder / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def sdk_hyperparameters(values: Mapping[str, Any]) -> dict[str, str]:
    """Every value JSON-encoded, as the SageMaker SDK does (train.py and SageMaker's
    training toolkit both undo it)."""
    return {str(key): json.dumps(value) for key, value in values.items()}


def metrics_from_final(final: Mapping[str, float]) -> dict[str, Any]:
    """metrics.json's shape, as far as SageMaker's final metric values tell it."""
    metrics: dict[str, Any] = {}
    for name, value in final.items():
        split, _, metric = name.partition("_")
        if split in ("validation", "test") and metric in ("accuracy", "macro_f1"):
            metrics.setdefault(split, {})[metric] = value
        elif name == "train_loss":
            metrics["train_loss"] = value
    return metrics


class SageMakerTrainingBackend:
    """Runs a training job on SageMaker: uploads the scripts, creates the job (or attaches
    to the job of that name when a restart finds it already created), then polls it and
    reports its transitions, metrics and result.

    The model lands where the local backend puts it, ``models/<job>/output/model.tar.gz``
    (SageMaker's ``<S3OutputPath>/<job>/output/model.tar.gz``)."""

    name = "sagemaker"

    def __init__(self, store: ObjectStore, config: SageMakerConfig, sagemaker_client: Any) -> None:
        self._store = store
        self._config = config
        self._client = sagemaker_client
        self._train = load_script("train")

    @staticmethod
    def check_base_model(base_model: str) -> None:
        if Path(base_model).expanduser().exists():
            raise InvalidArgument(
                {"base_model": f"{base_model!r} is a local folder, which a SageMaker job cannot"
                 " read: give a Hugging Face hub id"}
            )  # fmt: skip
        if not looks_like_hub_id(base_model):
            raise InvalidArgument({"base_model": f"{base_model!r} is not a hub id (org/name)"})
        import huggingface_hub

        try:
            huggingface_hub.model_info(base_model, timeout=10)
        except Exception as error:  # offline, unknown id, gated: all mean "cannot start"
            raise FailedPrecondition(
                f"base_model {base_model!r} cannot be checked on the Hugging Face hub from"
                f" here ({type(error).__name__}: {str(error)[:200]}); the job would fail"
                " to load it"
            ) from None

    # ---- the request

    def code_key(self, job_name: str) -> str:
        return f"code/{job_name}/sourcedir.tar.gz"

    def _channel_uri(self, prefix: str) -> str:
        """An object-store prefix (``datasets/x/train/``) as an S3 prefix URI."""
        trailing = "/" if prefix.endswith("/") else ""
        return self._store.uri(prefix.rstrip("/")) + trailing

    def training_request(self, job: TrainingJob, sourcedir_uri: str) -> dict[str, Any]:
        """The CreateTrainingJob request for ``job`` (the code already uploaded)."""
        hyperparameters: dict[str, Any] = dict(job.hyperparameters)
        channels = {name: self._channel_uri(prefix) for name, prefix in job.channels.items()}
        init = str(hyperparameters.get("init_model_dir") or "")
        if init:
            # A model in the object store (its model.tar.gz): SageMaker downloads it as a
            # channel, and train.py reads the folder that holds it.
            channels[INIT_CHANNEL] = self._store.uri(self._store.key_of(init))
            hyperparameters["init_model_dir"] = INIT_CHANNEL_DIR
        hyperparameters |= {
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": sourcedir_uri,
        }
        region = getattr(getattr(self._client, "meta", None), "region_name", None)
        if isinstance(region, str) and region:
            hyperparameters["sagemaker_region"] = region
        return {
            "TrainingJobName": job.name,
            "AlgorithmSpecification": {
                "TrainingImage": self._config.training_image,
                "TrainingInputMode": "File",
                "MetricDefinitions": [dict(d) for d in self._train.METRIC_DEFINITIONS],
            },
            "RoleArn": self._config.role_arn,
            "HyperParameters": sdk_hyperparameters(hyperparameters),
            "InputDataConfig": [
                {
                    "ChannelName": name,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": uri,
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                    **({} if name == INIT_CHANNEL else {"ContentType": "text/csv"}),
                    "CompressionType": "None",
                }
                for name, uri in channels.items()
            ],
            "OutputDataConfig": {"S3OutputPath": self._store.uri("models")},
            "ResourceConfig": {
                "InstanceType": self._config.instance_type,
                "InstanceCount": 1,
                "VolumeSizeInGB": self._config.volume_size_gb,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": self._config.max_runtime_seconds},
            "Tags": [{"Key": "sentiloop:source", "Value": job.source}],
        }

    def _start(self, job: TrainingJob) -> None:
        sourcedir = self._store.put_bytes(self.code_key(job.name), sourcedir_tarball())
        request = self.training_request(job, sourcedir)
        try:
            self._client.create_training_job(**request)
        except ClientError as error:
            if not already_exists(error):
                raise
            # A restart: the job was created before; follow it rather than fail.
            log.info("training job %s already exists on SageMaker; attaching", job.name)

    # ---- running

    async def run(self, job: TrainingJob, report: Report) -> None:
        await report(TrainingEvent("status", status="Starting"))
        try:
            await asyncio.to_thread(self._start, job)
        except Exception as error:  # AWS refused, or init_model_dir is not in the store
            message = error_message(error) if isinstance(error, AWSError) else str(error)
            await report(TrainingEvent("failed", reason=f"could not start the job: {message}"))
            return
        await self._follow(job.name, report)

    async def _follow(self, job_name: str, report: Report) -> None:
        seen_transitions = 0
        seen_metrics: dict[str, float] = {}
        failing_since: float | None = None
        while True:
            try:
                described = await asyncio.to_thread(
                    self._client.describe_training_job, TrainingJobName=job_name
                )
            except AWSError as error:
                if is_missing(error):
                    await report(TrainingEvent("failed", reason=f"SageMaker lost the job: {error}"))
                    return
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                if now - failing_since > max(900.0, 20 * self._config.poll_seconds):
                    await report(
                        TrainingEvent(
                            "failed",
                            reason=f"lost touch with SageMaker: {error_message(error)}",
                        )
                    )
                    return
                log.warning("describing training job %s failed: %s", job_name, error)
                await asyncio.sleep(self._config.poll_seconds)
                continue
            failing_since = None
            transitions = described.get("SecondaryStatusTransitions") or []
            for transition in transitions[seen_transitions:]:
                await report(TrainingEvent("status", status=str(transition["Status"])))
            seen_transitions = max(seen_transitions, len(transitions))
            final = {
                str(item["MetricName"]): float(item["Value"])
                for item in described.get("FinalMetricDataList") or []
            }
            for name, value in final.items():
                if seen_metrics.get(name) != value:
                    seen_metrics[name] = value
                    await report(TrainingEvent("metric", name=name, value=value))
            status = described.get("TrainingJobStatus", "")
            if status == "Completed":
                artifact = described.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
                metrics = await asyncio.to_thread(self._output_metrics, artifact)
                await report(
                    TrainingEvent(
                        "completed", artifact=artifact, metrics=metrics or metrics_from_final(final)
                    )
                )
                return
            if status == "Failed":
                reason = described.get("FailureReason") or "the SageMaker training job failed"
                await report(TrainingEvent("failed", reason=str(reason)))
                return
            if status == "Stopped" and described.get("SecondaryStatus") == "MaxRuntimeExceeded":
                limit = described.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
                reason = f"the job ran past its maximum runtime ({limit} s) and was stopped"
                await report(TrainingEvent("failed", reason=reason))
                return
            if status == "Stopped":
                reason = described.get("FailureReason") or "stopped on request"
                await report(TrainingEvent("failed", status="Stopped", reason=str(reason)))
                return
            await asyncio.sleep(self._config.poll_seconds)

    def _output_metrics(self, artifact: str) -> dict[str, Any]:
        """metrics.json from the job's output.tar.gz (train.py copies it to
        SM_OUTPUT_DATA_DIR), beside model.tar.gz; {} when it cannot be read."""
        try:
            key = self._store.key_of(artifact).rsplit("/", 1)[0] + "/output.tar.gz"
            data = self._store.get_bytes(key)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.lstrip("./") == "metrics.json":
                        extracted = tar.extractfile(member)
                        if extracted is not None:
                            metrics = json.loads(extracted.read())
                            return metrics if isinstance(metrics, dict) else {}
        except Exception as error:
            log.info("no metrics.json in the output of %s (%s)", artifact, error)
        return {}

    @staticmethod
    def estimated_time(preset: str) -> str:
        # Instance provisioning and the container's download come before any training.
        return "5-10 minutes" if preset == "tiny" else "10-20 minutes"

    async def stop(self, job_name: str) -> None:
        try:
            await asyncio.to_thread(self._client.stop_training_job, TrainingJobName=job_name)
        except AWSError as error:
            raise Unavailable(
                f"SageMaker could not stop {job_name}: {error_message(error)}"
            ) from error


# --------------------------------------------------------------------------- endpoint


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


_UPDATING = ("Updating", "SystemUpdating", "RollingBack")
_BUSY = ("Creating", *_UPDATING)


class SageMakerEndpoint:
    """The serving endpoint: one SageMaker model and endpoint configuration per version
    (named ``<endpoint>-<version>-<hash>``), the version recorded as the configuration's
    ``sentiloop:model-version`` tag and in the name of its one production variant."""

    def __init__(
        self, config: SageMakerConfig, sagemaker_client: Any, settle_timeout: float = 1800.0
    ) -> None:
        self.name = config.endpoint_name
        self._config = config
        self._client = sagemaker_client
        self._settle_timeout = settle_timeout
        self._config_versions: dict[str, tuple[str, tuple[str, ...]]] = {}

    # ---- names and requests

    def names(self, version: str, artifact: str) -> DeploymentNames:
        digest = hashlib.sha256(
            "\0".join(
                (
                    version,
                    artifact,
                    self._config.inference_image,
                    self._config.inference_instance_type,
                    json.dumps(INFERENCE_ENVIRONMENT, sort_keys=True),
                )
            ).encode()
        ).hexdigest()[:8]
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
                "Environment": dict(INFERENCE_ENVIRONMENT),
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
                    "InitialInstanceCount": 1,
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
            self._client.update_endpoint(
                EndpointName=self.name, EndpointConfigName=names.endpoint_config
            )
        log.info("endpoint %s: deploying %s (%s)", self.name, version, names.endpoint_config)

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
            return EndpointView("NotDeployed")
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
        if view.status == "NotDeployed":
            return EndpointStatus("NotDeployed")
        status, version, reason = view.status, view.model_version, view.failure_reason
        if status == "Creating":
            version, reason = "", ""
        elif status in _UPDATING:
            status, reason = "Updating", ""
        elif status in ("Failed", "UpdateRollbackFailed"):
            status, reason = "Failed", reason or f"endpoint is {status}"
        elif status != "InService":
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
                if view.status == "InService" and view.model_version == version and settled:
                    return EndpointStatus("InService", version)
                if view.status in ("Failed", "UpdateRollbackFailed"):
                    return self.endpoint_status(view)
                if view.status == "InService" and settled and view.failure_reason:
                    # The update failed and SageMaker rolled back to the earlier version.
                    return EndpointStatus("Failed", view.model_version, view.failure_reason)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return await self.status()
            await asyncio.sleep(min(self._config.poll_seconds, remaining))
