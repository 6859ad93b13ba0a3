"""Training as SageMaker training jobs running the very same sagemaker_scripts/train.py,
driven through a boto3 client handed in by the caller. Every boto3 call blocks, so the async
methods run them in a worker thread."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from sentiloop.aws.config import (
    INIT_CHANNEL,
    INIT_CHANNEL_DIR,
    SOURCEDIR_FILES,
    SageMakerConfig,
)
from sentiloop.aws.errors import AWSError, already_exists, error_message, is_missing
from sentiloop.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from sentiloop.core.objectstore import ObjectStore
from sentiloop.core.scripts import load_script, scripts_dir
from sentiloop.core.training import (
    Report,
    TrainingEvent,
    TrainingJob,
    looks_like_hub_id,
)

log = logging.getLogger("sentiloop.sagemaker")


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
        if split in ("validation", "test") and metric in ("accuracy", "macro_f1", "ece", "brier"):
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
