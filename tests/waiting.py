"""Waiting in tests: for a condition, never for a time (one helper for every test).

`await eventually(cond)` / `eventually_sync(cond)` poll `cond` until it is true and return its
value; `cond` may be a plain function or a coroutine function. `await holds(cond, seconds)`
is the opposite check ("this must not happen"): `cond` stays true for that long.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

POLL = 0.05


async def _value(cond: Callable[[], Any]) -> Any:
    v = cond()
    return await v if inspect.isawaitable(v) else v


async def eventually(
    cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition", poll: float = POLL
) -> Any:
    """Poll until `cond()` is truthy; return it (AssertionError naming `what` on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        v = await _value(cond)
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(poll)


def eventually_sync(
    cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition", poll: float = POLL
) -> Any:
    """`eventually` for tests outside an event loop (cond must be a plain function)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


async def holds(
    cond: Callable[[], Any], seconds: float, what: str = "condition", poll: float = POLL
) -> None:
    """Assert that `cond()` stays truthy for `seconds` (a thing that must not happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not await _value(cond):
            raise AssertionError(f"{what} stopped holding")
        await asyncio.sleep(poll)
