"""Management API of snapshot data (issue 15): export a snapshot's extents and data, revert the
volume to a snapshot, import data into the volume (a backup restore, a clone). The work is
controller/transfer.py's; this module maps HTTP onto it:

- GET  /v1/snapshots/{name}/extents            {"size", "extents": [[off, len], ..]}
- GET  /v1/snapshots/{name}/data?offset=O&length=L   the bytes (422 {"bad": runs} when blocks
  have no good copy on any replica)
- POST /v1/snapshots/{name}/revert             {"reverted", "bytes"} (409 while an initiator is
  logged in)
- POST /v1/import  {"action": "begin", "source", "total"} | {"action": "end" [, "error"]}
- PUT  /v1/import/data?offset=O  (body: the bytes) | ?offset=O&length=L&zero=1 (unmap)

Every call needs the API token (it reads or replaces the volume's data).
"""

from __future__ import annotations

from aiohttp import web

from jiva_engine.api.server import json_body, needs_token
from jiva_engine.controller.transfer import (
    MAX_DATA,
    SnapshotBadBlocks,
    SnapshotUnknown,
    TransferFailed,
    TransferRefused,
    Transfers,
)
from jiva_engine.volume import OutOfRange, VolumeFenced, VolumeIOError, VolumeNotReady

TRANSFERS = web.AppKey("transfers", Transfers)


def _error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, "status": status, **extra}, status=status)


def _failure(e: Exception) -> web.Response:
    """The HTTP answer for an exception of a transfer (anything else propagates: a 500)."""
    if isinstance(e, SnapshotUnknown):
        return _error(404, str(e))
    if isinstance(e, SnapshotBadBlocks):
        return _error(422, str(e), bad=[list(r) for r in e.runs])
    if isinstance(e, (TransferRefused, VolumeFenced)):
        return _error(409, str(e))
    if isinstance(e, (ValueError, OutOfRange)):
        return _error(400, str(e))
    if isinstance(e, (TransferFailed, VolumeNotReady, VolumeIOError)):
        return _error(503, str(e))
    raise e


_HANDLED = (
    SnapshotUnknown,
    SnapshotBadBlocks,
    TransferRefused,
    TransferFailed,
    ValueError,
    OutOfRange,
    VolumeFenced,
    VolumeNotReady,
    VolumeIOError,
)


def _int(request: web.Request, key: str, default: int | None = None) -> int:
    raw = request.query.get(key)
    if raw is None:
        if default is None:
            raise ValueError(f"query parameter {key} is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"query parameter {key}={raw!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"query parameter {key} must not be negative")
    return value


@needs_token
async def get_extents(request: web.Request) -> web.StreamResponse:
    """GET /v1/snapshots/{name}/extents"""
    name = request.match_info["name"]
    try:
        size, runs = await request.app[TRANSFERS].extents(name)
    except _HANDLED as e:
        return _failure(e)
    return web.json_response({"name": name, "size": size, "extents": [list(r) for r in runs]})


@needs_token
async def get_data(request: web.Request) -> web.StreamResponse:
    """GET /v1/snapshots/{name}/data?offset=O&length=L (L at most 16 MiB)"""
    name = request.match_info["name"]
    try:
        offset = _int(request, "offset", 0)
        length = _int(request, "length")
        data = await request.app[TRANSFERS].read(name, offset, length)
    except _HANDLED as e:
        return _failure(e)
    return web.Response(body=bytes(data), content_type="application/octet-stream")


@needs_token
async def post_revert(request: web.Request) -> web.StreamResponse:
    """POST /v1/snapshots/{name}/revert"""
    name = request.match_info["name"]
    try:
        copied = await request.app[TRANSFERS].revert(name)
    except _HANDLED as e:
        return _failure(e)
    return web.json_response({"reverted": name, "bytes": copied})


@needs_token
async def post_import(request: web.Request) -> web.StreamResponse:
    """POST /v1/import {"action": "begin", "source": text, "total": bytes} | {"action": "end"}"""
    body = await json_body(request)
    tr = request.app[TRANSFERS]
    action = body.get("action") if isinstance(body, dict) else None
    try:
        if action == "begin":
            source, total = body.get("source"), body.get("total")
            if not isinstance(source, str) or isinstance(total, bool) or not isinstance(total, int):
                raise ValueError('"begin" needs "source" (text) and "total" (bytes)')
            if total < 0:
                raise ValueError('"total" must not be negative')
            t = tr.begin_import(source, total)
            return web.json_response({"import": t.view()}, status=201)
        if action == "end":
            error = body.get("error")
            if error is not None and not isinstance(error, str):
                raise ValueError('"error" must be a text')
            t = await tr.end_import(error)
            return web.json_response({"import": t.view()})
    except _HANDLED as e:
        return _failure(e)
    return _error(400, 'expected {"action": "begin", "source": text, "total": bytes} or'
                       ' {"action": "end"}')  # fmt: skip


@needs_token
async def put_import_data(request: web.Request) -> web.StreamResponse:
    """PUT /v1/import/data?offset=O (body: the bytes) | ?offset=O&length=L&zero=1 (unmap)"""
    tr = request.app[TRANSFERS]
    try:
        offset = _int(request, "offset")
        if request.query.get("zero") in ("1", "true", "yes"):
            length = _int(request, "length")
            await tr.import_zero(offset, length)
            return web.json_response({"offset": offset, "zeroed": length})
        n = request.content_length
        if n is None:
            raise ValueError("the body needs a Content-Length")
        if n > MAX_DATA:
            return _error(413, f"at most {MAX_DATA} bytes per request")
        data = await request.content.readexactly(n) if n else b""
        await tr.import_data(offset, data)
    except _HANDLED as e:
        return _failure(e)
    return web.json_response({"offset": offset, "written": n})


def add_routes(app: web.Application, transfers: Transfers) -> None:
    """Register the snapshot data, revert and import calls on `app`."""
    app[TRANSFERS] = transfers
    app.router.add_get("/v1/snapshots/{name}/extents", get_extents)
    app.router.add_get("/v1/snapshots/{name}/data", get_data)
    app.router.add_post("/v1/snapshots/{name}/revert", post_revert)
    app.router.add_post("/v1/import", post_import)
    app.router.add_put("/v1/import/data", put_import_data)
