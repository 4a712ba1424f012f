"""The steps of a replica's snapshot operations, in order (docs/ENGINE.md "Snapshots").

The store (`store.py`) changes files and memory one step at a time; this module runs the steps
in the order that keeps every step crash safe, with the slow parts (disk syncs, reads of a
layer) in a worker thread and the parts that must not interleave with writes in the loop thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jiva_engine.replica.store import ReplicaStore

CHUNK_BLOCKS = 1024  # 4 MiB of a layer scanned per merge chunk
STEP_SECONDS = 0.5  # one SNAP_DELETE request works about this long, then answers


async def _thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def take(
    store: ReplicaStore,
    rec: dict[str, Any],
    sync_data: Callable[[], Awaitable[None]],
    persist_meta: Callable[[], Awaitable[None]],
) -> None:
    """SNAPSHOT: sync the head, record the intent, freeze the head into a layer, list it.

    A crash before the intent is durable leaves no trace; after it, the next open completes or
    undoes the snapshot from what the files show (`ReplicaStore._recover_snapshot_op`)."""
    await sync_data()
    store.snapshot_intent(rec)
    try:
        await persist_meta()
    except BaseException:
        store.meta.pop("snapshot_op", None)
        raise
    store.snapshot_freeze()
    store.snapshot_commit()
    await persist_meta()


async def delete_step(
    store: ReplicaStore,
    snap_id: str,
    cursors: dict[str, tuple[int, int]],
    persist_meta: Callable[[], Awaitable[None]],
    seconds: float = STEP_SECONDS,
) -> dict[str, Any]:
    """SNAP_DELETE: merge the layer into its child for about `seconds`, then answer
    {"done", "merged"}; when every block is merged, forget the snapshot and remove its files.

    Data is written, synced, and only then given its checksum entries, so an interrupted merge
    leaves blocks that still read through to the layer; a repeat (or a new request after a
    crash, from block 0) finds them merged or merges them again."""
    if snap_id not in store.layers.ids():
        cursors.pop(snap_id, None)
        return {"done": True, "merged": 0}
    deadline = time.monotonic() + seconds
    merged = 0
    seen = store.drops
    cursor, gen = cursors.get(snap_id, (0, seen))
    if gen != seen:  # a DROP since the last step may have punched blocks already merged
        cursor = 0
    while True:
        while cursor >= 0:
            pos, todo, nxt = store.merge_plan(snap_id, cursor, CHUNK_BLOCKS)
            if todo:
                runs = await _thread(store.merge_copy, pos, todo)
                pos = store.layers.position(snap_id)  # (one delete at a time: the list holds)
                written = store.merge_write(pos, runs)
                await _thread(store.merge_sync, pos)
                if store.drops != seen:  # blocks just written may be punched: no entries,
                    cursor, seen = 0, store.drops  # and the whole layer is scanned again
                    continue
                store.merge_entries(pos, runs, written)
                merged += len(written) << 12
            cursor = nxt
            cursors[snap_id] = (cursor, seen)
            if cursor >= 0 and time.monotonic() > deadline:
                return {"done": False, "merged": merged}
        pos = store.layers.position(snap_id)
        child = store.layers.list[pos] if pos < len(store.layers) else None
        await _thread(child.sync if child is not None else store.datasync)
        if store.drops == seen:
            break
        cursor, seen = 0, store.drops
    layer = store.delete_commit(snap_id)
    await persist_meta()
    store.drop_layer(layer)
    cursors.pop(snap_id, None)
    return {"done": True, "merged": merged}


async def reset(store: ReplicaStore, persist_meta: Callable[[], Awaitable[None]]) -> None:
    """SNAP_RESET: forget every layer, empty the head; meta first, then the files."""
    gone = store.snap_reset()
    await persist_meta()
    store.empty_head()
    for layer in gone:
        store.drop_layer(layer)
