"""Child processes that never outlive their parent."""

from __future__ import annotations

import os
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


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie has exited, though it answers kill 0;
    a process of another user, which kill refuses, is alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
