"""Every SENTILOOP_* variable the code reads is in the README (its configuration tables or
the prose beside them), so that the documented configuration cannot drift from the code.

The README shortens families: `SENTILOOP_S3_RETRY_MODE`, `_MAX_ATTEMPTS` means
SENTILOOP_S3_MAX_ATTEMPTS, and `SENTILOOP_<SERVICE>_PORT` stands for every service."""

from __future__ import annotations

import re
from pathlib import Path

from sentiloop.core.config import SERVICES

ROOT = Path(__file__).resolve().parents[1]
# Not configuration: the local training backend hands train.py its hyperparameters file
# through this variable, as SageMaker does through its own.
INTERNAL = {"SENTILOOP_HYPERPARAMETERS_FILE"}
NAME = re.compile(r"SENTILOOP_[A-Z0-9_]*[A-Z0-9]")


def read_by_code() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "services" / "sentiloop").rglob("*.py"):
        if "v1" not in path.relative_to(ROOT).parts:
            names |= set(NAME.findall(path.read_text(encoding="utf-8")))
    # The SageMaker settings are read by suffix (text("ROLE_ARN")...): all under one prefix.
    config = (ROOT / "services" / "sentiloop" / "aws" / "config.py").read_text(encoding="utf-8")
    names |= {
        f"SENTILOOP_SAGEMAKER_{s}" for s in re.findall(r'(?:text|number)\("([A-Z_]+)"', config)
    }
    return names - INTERNAL


def documented() -> set[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names: set[str] = set()
    for line in readme.splitlines():
        full = [
            name.replace("<SERVICE>", service.upper())
            for name in re.findall(r"SENTILOOP_(?:<SERVICE>|[A-Z0-9_])*[A-Z0-9]", line)
            for service in (SERVICES if "<SERVICE>" in name else [""])
        ]
        names |= set(full)
        for short in re.findall(r"`(_[A-Z0-9_]+)`", line):
            for name in full:  # `_MAX_ATTEMPTS` after SENTILOOP_S3_RETRY_MODE: any prefix
                parts = name.split("_")
                names |= {"_".join(parts[:i]) + short for i in range(2, len(parts))}
    return names


def test_every_variable_the_code_reads_is_documented() -> None:
    missing = sorted(read_by_code() - documented())
    assert not missing, f"not in the README: {missing}"


def test_the_check_sees_the_variables() -> None:
    names = read_by_code()
    # A few of every kind, so that a broken pattern cannot pass the test above vacuously.
    assert {"SENTILOOP_DATA_DIR", "SENTILOOP_S3_MAX_ATTEMPTS", "SENTILOOP_GATE_MIN_GAIN"} <= names
    assert {"SENTILOOP_SAGEMAKER_ROLE_ARN", "SENTILOOP_SAGEMAKER_POLL_SECONDS"} <= names
    assert len(names) > 50
