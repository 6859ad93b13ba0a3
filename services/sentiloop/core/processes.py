"""Child processes that never outlive their parent."""

from __future__ import annotations

import sys

# Sets the death signal, then becomes the real program (the signal survives exec).
_LAUNCHER = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def dying_with_parent(argv: list[str]) -> list[str]:
    """``argv`` wrapped so the program dies with its parent, without a preexec_fn: a
    process that has grpc loaded must not fork and run Python in the child (grpc's
    fork handlers abort it), while a plain spawn is safe."""
    return [sys.executable, "-c", _LAUNCHER, *argv]
