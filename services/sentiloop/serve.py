"""Runs one service of the mesh: ``python -m sentiloop.serve NAME``."""

from __future__ import annotations

import argparse
import importlib

from sentiloop.core.config import SERVICES
from sentiloop.core.server import main_for


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one Sentiloop service.")
    parser.add_argument("service", choices=sorted(SERVICES))
    args = parser.parse_args(argv)
    # Imported lazily so that each process loads only its own service's dependencies.
    module = importlib.import_module(f"sentiloop.{args.service}.servicer")
    main_for(module.create_app, args.service)


if __name__ == "__main__":
    main()
