"""Placeholders for RPCs of the contract that a later issue builds: they answer
UNIMPLEMENTED with the issue's number instead of grpc's anonymous default."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sentiloop.core.errors import NotBuiltYet


def not_built_yet(rpc: str, issue: int) -> Any:  # Any: it stands in for any RPC's signature
    async def handler(self: Any, request: Any, context: Any) -> Any:
        raise NotBuiltYet(rpc, issue)

    return handler


def not_built_yet_stream(rpc: str, issue: int) -> Any:
    async def handler(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        raise NotBuiltYet(rpc, issue)
        yield  # unreachable: makes this an async generator, as streaming handlers are

    return handler
