"""Generates the Python messages, gRPC stubs and mypy stubs from protos/.

`gen_protos.py OUT` writes them under OUT/sentiloop/v1; with `--check` it generates
into a temporary folder and fails when OUT differs (CI's drift check)."""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("sentiloop/v1")


def generate(out: Path) -> None:
    out = out.resolve()
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    target = out / PACKAGE
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*_pb2*.py*"):
        stale.unlink()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    # protoc's mypy plugin chats on stderr; show it only when generation fails.
    result = subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{PROTO_ROOT}", f"-I{PROTO_ROOT / 'third_party'}",
            f"--python_out={out}", f"--grpc_python_out={out}",
            f"--mypy_out={out}", f"--mypy_grpc_out={out}",
            *protos,
        ],
        cwd=PROTO_ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"protoc failed with exit code {result.returncode}")
    init = target / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated from protos/sentiloop/v1 by `make protos`; do not edit."""\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not args.check:
        generate(args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        committed_dir, fresh_dir = args.out / PACKAGE, fresh / PACKAGE
        names = sorted(
            {p.name for p in committed_dir.glob("*_pb2*.py*")}
            | {p.name for p in fresh_dir.glob("*_pb2*.py*")}
        )
        stale = [
            n
            for n in names
            if not (committed_dir / n).exists()
            or not (fresh_dir / n).exists()
            or not filecmp.cmp(committed_dir / n, fresh_dir / n, shallow=False)
        ]
    if stale:
        print("generated code is stale (run 'make protos'):", ", ".join(stale), file=sys.stderr)
        return 1
    print(f"generated code is up to date ({len(names)} files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
