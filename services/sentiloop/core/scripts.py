"""The SageMaker scripts (train.py, inference.py), loaded from sagemaker_scripts/.

They are standalone files, not part of this package, because the very same files run
inside SageMaker's containers."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from sentiloop.core.config import process_settings


def scripts_dir() -> Path:
    return process_settings().scripts_path


@cache
def load_script(name: str) -> ModuleType:
    """Imports sagemaker_scripts/NAME.py (cheap: both import torch lazily)."""
    path = scripts_dir() / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"configuration error: {path} not found (set SENTILOOP_SCRIPTS_DIR)")
    spec = importlib.util.spec_from_file_location(f"sentiloop_script_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
