"""Configuration from environment variables, with defaults that run everything on
one machine out of the box."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"configuration error: {name}={raw!r} is not an integer") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"configuration error: {name}={raw!r} is not a number") from None


def env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"configuration error: {name}={raw!r} is not true or false")


def env_name(service: str, suffix: str) -> str:
    """``env_name("model_init", "PORT")`` -> ``SENTILOOP_MODEL_INIT_PORT``."""
    return f"SENTILOOP_{service.upper()}_{suffix}"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    host: str
    ports: dict[str, int]
    addresses: dict[str, str]
    envoy_port: int
    envoy_admin_port: int
    max_text_length: int
    shutdown_grace_seconds: float
    restart_delay_seconds: float
    log_level: str
    envoy_listen_host: str
    envoy_descriptor: Path | None
    object_store: str
    # The model preset of a training that names none (bootstrap, retraining).
    default_preset: str
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    # The largest labelled file an import accepts, per file.
    dataset_max_bytes: int = 50_000_000

    def address(self, service: str) -> str:
        return self.addresses[service]

    def service_dir(self, service: str) -> Path:
        path = self.data_dir / service
        path.mkdir(parents=True, exist_ok=True)
        return path


def load_settings() -> Settings:
    host = _env("SENTILOOP_HOST", "127.0.0.1")
    ports = {name: env_int(env_name(name, "PORT"), port) for name, (port, _) in SERVICES.items()}
    addresses = {name: _env(env_name(name, "ADDR"), f"{host}:{ports[name]}") for name in SERVICES}
    return Settings(
        data_dir=Path(_env("SENTILOOP_DATA_DIR", "data")).resolve(),
        host=host,
        ports=ports,
        addresses=addresses,
        envoy_port=env_int("SENTILOOP_ENVOY_PORT", 8080),
        envoy_admin_port=env_int("SENTILOOP_ENVOY_ADMIN_PORT", 9901),
        max_text_length=env_int("SENTILOOP_MAX_TEXT_LENGTH", 5000),
        shutdown_grace_seconds=env_float("SENTILOOP_SHUTDOWN_GRACE_SECONDS", 10.0),
        restart_delay_seconds=env_float("SENTILOOP_RESTART_DELAY_SECONDS", 2.0),
        log_level=_env("SENTILOOP_LOG_LEVEL", "INFO").upper(),
        envoy_listen_host=_env("SENTILOOP_ENVOY_HOST", host),
        object_store=_env("SENTILOOP_OBJECT_STORE", "local").lower(),
        default_preset=_env("SENTILOOP_DEFAULT_PRESET", "minilm"),
        envoy_descriptor=Path(d) if (d := os.environ.get("SENTILOOP_ENVOY_DESCRIPTOR")) else None,
        dataset_max_bytes=env_int("SENTILOOP_DATASET_MAX_BYTES", 50_000_000),
        cors_origins=[
            o.strip() for o in _env("SENTILOOP_CORS_ORIGINS", "*").split(",") if o.strip()
        ],
    )
