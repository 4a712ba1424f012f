"""Unit tests of start_eagerly: a coroutine runs at once and becomes a Task only if it waits."""

from __future__ import annotations

import asyncio

import pytest

from jiva_engine.iscsi.eager import start_eagerly


def spawner(tasks: list[asyncio.Task[None]]):
    """A spawn() that records the tasks it creates."""

    def spawn(coro):
        task = asyncio.get_running_loop().create_task(coro)
        tasks.append(task)
        return task

    return spawn


async def test_no_task_when_nothing_waits():
    """A coroutine that never suspends completes inside start_eagerly: no Task at all."""
    done = []
    tasks: list[asyncio.Task[None]] = []

    async def quick() -> None:
        done.append(1)

    assert start_eagerly(quick(), spawner(tasks)) is None
    assert done == [1] and tasks == []


async def test_waits_in_a_task_and_sees_results_and_errors():
    """After its first suspension the coroutine goes on in a Task: it gets each future's
    result, sees a future's exception where it awaited it, and survives a bare yield."""
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    seen = []
    tasks: list[asyncio.Task[None]] = []

    async def slow() -> None:
        seen.append(await first)
        await asyncio.sleep(0)
        try:
            await second
        except ValueError as e:
            seen.append(str(e))

    task = start_eagerly(slow(), spawner(tasks))
    assert task is not None and tasks == [task] and seen == []
    first.set_result("one")
    await asyncio.sleep(0.01)
    assert seen == ["one"] and not task.done()
    second.set_exception(ValueError("two"))
    await asyncio.wait_for(task, 1)
    assert seen == ["one", "two"]


async def test_cancel_reaches_the_coroutine():
    """Cancelling the Task cancels what the coroutine waits for, and the coroutine sees it."""
    fut = asyncio.get_running_loop().create_future()
    cleaned = []

    async def waiter() -> None:
        try:
            await fut
        finally:
            cleaned.append(1)

    task = start_eagerly(waiter(), spawner([]))
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fut.cancelled() and cleaned == [1]


async def test_error_before_waiting_propagates():
    """An exception raised before the first suspension comes out of start_eagerly."""

    async def broken() -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        start_eagerly(broken(), spawner([]))
