"""Management HTTP API of a controller (DESIGN.md §5): status, stats, metrics, replica add/remove,
online grow, QoS limits, scrub, snapshots."""

from __future__ import annotations

import functools
import hmac
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from jiva_engine.controller.grow import GrowRefused
from jiva_engine.controller.qos import MiB, check_iops, check_mbps
from jiva_engine.controller.scrub import ScrubRunning
from jiva_engine.controller.snapshots import SnapshotRefused
from jiva_engine.controller.volume import Volume
from jiva_engine.metrics import Exposition
from jiva_engine.metrics import label as _label
from jiva_engine.metrics import response as metrics_response
from jiva_engine.util import parse_size
from jiva_engine.volume import VolumeFenced, VolumeNotReady

log = logging.getLogger("jiva.api")

_VOLUME = web.AppKey("volume", Volume)
_CONF = web.AppKey("conf", dict)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error (404, 405, bad input, unexpected) is a JSON body with a clear message."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, e.text if e.text and not e.text.startswith("404") else e.reason)
    except Exception as e:  # never a traceback to the client
        return _error(500, f"internal error: {type(e).__name__}: {e}")


def _authorised(request: web.Request) -> bool:
    tokens = request.app[_CONF]["tokens"]  # the token, then (a rotation) the previous one
    if not tokens:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # compare with every token, so the time taken does not tell which one nearly matched
    matches = [hmac.compare_digest(given.strip().encode(), t.encode()) for t in tokens]
    return any(matches)


def _unauthorised() -> web.Response:
    resp = _error(401, "this call needs 'Authorization: Bearer TOKEN' with the volume's API token")
    resp.headers["WWW-Authenticate"] = 'Bearer realm="jiva"'
    return resp


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def needs_token(handler: Handler) -> Handler:
    """A call that changes the volume (or reads its data): 401 without the API token."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        if not _authorised(request):
            return _unauthorised()
        return await handler(request)

    return checked


async def json_body(request: web.Request) -> Any:
    """The request's JSON body (None when there is none); malformed JSON is a 400."""
    try:
        return json.loads(await request.text() or "null")
    except ValueError as e:
        raise web.HTTPBadRequest(text=f"request body is not valid JSON: {e}") from None


def volume_status(app: web.Application) -> dict[str, Any]:
    """The status JSON of DESIGN.md §5."""
    vol = app[_VOLUME]
    st = vol.status()
    st["portal"] = app[_CONF]["portal"]
    st["iqn"] = app[_CONF]["iqn"]
    return st


async def get_volume(request: web.Request) -> web.Response:
    """GET /v1/volume"""
    return web.json_response(volume_status(request.app))


def _stats(app: web.Application) -> dict[str, Any]:
    vol = app[_VOLUME]
    return {
        "name": vol.name,
        "state": vol.state,
        "epoch": vol.epoch,
        "uptime_seconds": round(time.time() - vol.started_at, 3),
        "volume": dict(vol.stats),
        "replicas": {
            m.address: {
                "mode": m.mode,
                "ops": m.writes,
                "reads": m.reads,
                "errors": m.errors,
                "rebuild": m.rebuild,
                "last_rebuild": m.last_rebuild,
            }
            for m in vol.members.values()
        },
    }


async def get_stats(request: web.Request) -> web.Response:
    """GET /v1/stats"""
    return web.json_response(_stats(request.app))


def _eta(v: int | None) -> int:
    return -1 if v is None else v


def render_metrics(app: web.Application) -> str:
    """Prometheus text exposition format (version 0.0.4)."""
    vol = app[_VOLUME]
    name = _label(vol.name)
    out = Exposition()
    metric = out.metric

    vl = f'volume="{name}"'
    s = vol.stats
    metric(
        "jiva_volume_up", "gauge", "1 while the volume serves I/O", [(vl, vol.state == "serving")]
    )
    metric(
        "jiva_volume_state",
        "gauge",
        "1 for the current state",
        [
            (f'{vl},state="{st}"', vol.state == st)
            for st in ("serving", "waiting", "no quorum", "fenced")
        ],
    )
    metric(
        "jiva_volume_degraded",
        "gauge",
        "1 unless every replica is current and every witness answers",
        [(vl, vol.degraded())],
    )
    metric(
        "jiva_volume_epoch", "gauge", "current view epoch (term << 32 | view)", [(vl, vol.epoch)]
    )
    quorum = vol.coord.quorum()
    metric("jiva_volume_voters", "gauge", "voters (replicas + witnesses)", [(vl, quorum["voters"])])
    metric(
        "jiva_volume_voters_missing",
        "gauge",
        "voters that do not answer",
        [(vl, len(quorum["missing"]))],
    )
    metric("jiva_volume_size_bytes", "gauge", "volume size", [(vl, vol.size)])
    metric(
        "jiva_volume_snapshots",
        "gauge",
        "snapshots every current member holds (as last seen)",
        [(vl, vol.snapshots.count)],
    )
    metric("jiva_volume_snapshots_limit", "gauge", "--max-snapshots", [(vl, vol.snapshots.limit)])
    qos = vol.qos
    metric("jiva_volume_qos_max_iops", "gauge", "QoS limit in I/Os per second (0: unlimited)",
           [(vl, qos.max_iops or 0)])  # fmt: skip
    metric("jiva_volume_qos_max_bytes_per_second", "gauge",
           "QoS limit in bytes per second (0: unlimited)",
           [(vl, int((qos.max_mbps or 0) * MiB))])  # fmt: skip
    metric("jiva_volume_qos_throttled_ios_total", "counter",
           "initiator I/Os that waited for the QoS limit", [(vl, qos.throttled_ios)])  # fmt: skip
    metric("jiva_volume_qos_throttled_seconds_total", "counter",
           "time initiator I/Os waited for the QoS limit", [(vl, qos.throttled_seconds)])  # fmt: skip
    for key, mname, help_text in [
        ("reads", "jiva_volume_reads_total", "read requests completed"),
        ("writes", "jiva_volume_writes_total", "write requests acknowledged"),
        ("flushes", "jiva_volume_flushes_total", "flushes completed"),
        ("unmaps", "jiva_volume_unmaps_total", "unmaps completed"),
        ("read_bytes", "jiva_volume_read_bytes_total", "bytes read"),
        ("write_bytes", "jiva_volume_write_bytes_total", "bytes written"),
        ("read_errors", "jiva_volume_read_errors_total", "reads failed on every replica"),
        ("write_errors", "jiva_volume_write_errors_total", "writes failed on every replica"),
        ("ejections", "jiva_volume_replica_ejections_total", "replicas removed after a failure"),
        (
            "lag_ejections",
            "jiva_volume_replica_lag_ejections_total",
            "replicas removed for lagging far behind their peers",
        ),
        ("quorum_losses", "jiva_volume_quorum_losses_total", "view changes short of a quorum"),
        ("held_seconds", "jiva_volume_io_held_seconds_total", "time I/O waited for a quorum"),
        (
            "lease_wait_seconds",
            "jiva_volume_lease_wait_seconds_total",
            "time start-ups waited out a previous controller's read lease",
        ),
        ("rebuilds_done", "jiva_volume_rebuilds_total", "rebuilds completed"),
        ("rebuild_bytes_copied", "jiva_volume_rebuild_bytes_total", "bytes copied by rebuilds"),
        ("read_seconds", "jiva_volume_read_seconds_total", "time spent in reads"),
        ("write_seconds", "jiva_volume_write_seconds_total", "time spent in writes"),
    ]:
        metric(mname, "counter", help_text, [(vl, s[key])])
    integ = vol.integrity()
    for key, mname, help_text in [
        ("checksum_errors", "jiva_volume_checksum_errors_total",
         "corrupt block copies found (failing their checksum, or outvoted by a scrub)"),
        ("blocks_repaired", "jiva_volume_blocks_repaired_total",
         "corrupt block copies rewritten from a good copy"),
        ("scrub_blocks_checked", "jiva_scrub_blocks_checked_total",
         "block copies compared by scrubs"),
        ("scrub_mismatched", "jiva_scrub_blocks_mismatched_total",
         "blocks whose good copies disagreed in a scrub"),
        ("scrub_bytes", "jiva_scrub_bytes_total", "volume bytes scrubbed"),
        ("scrubs_done", "jiva_scrubs_total", "scrub passes ended (any result)"),
    ]:  # fmt: skip
        metric(mname, "counter", help_text, [(vl, s.get(key, 0))])
    metric(
        "jiva_volume_unrepaired_blocks",
        "gauge",
        "blocks with no good copy on any replica (or no majority)",
        [(vl, integ["unrepaired_blocks"])],
    )
    sc = vol.scrubber.status()
    metric("jiva_scrub_running", "gauge", "1 while a scrub runs", [(vl, sc["running"])])
    metric("jiva_scrub_progress", "gauge", "progress of the current (else last) scrub, 0..1",
           [(vl, sc["progress"])])  # fmt: skip
    metric(
        "jiva_scrub_last_completion_timestamp_seconds",
        "gauge",
        "when the last scrub ended (0: none yet)",
        [(vl, sc["last_finished"] or 0)],
    )
    last = sc["last_result"] or ""
    metric(
        "jiva_scrub_last_result",
        "gauge",
        "1 for the result of the last scrub",
        [
            (f'{vl},result="{r}"', last.split(":")[0] == r)
            for r in ("clean", "repaired", "unrepaired", "failed", "cancelled")
        ],
    )
    metric(
        "jiva_scrub_last_clean",
        "gauge",
        "1 when the last scrub found the volume clean or repaired everything",
        [(vl, last in ("clean", "repaired"))],
    )
    metric(
        "jiva_transfer_bytes_total",
        "counter",
        "bytes moved by snapshot exports, reverts and imports",
        [(f'{vl},kind="{k}"', n) for k, n in vol.transfers.bytes.items()],
    )
    reps = list(vol.members.values())
    metric(
        "jiva_replica_mode",
        "gauge",
        "1 for the replica's current mode",
        [
            (f'{vl},replica="{_label(m.address)}",mode="{mode}"', m.mode == mode)
            for m in reps
            for mode in ("RW", "WO", "ERR")
        ],
    )
    metric(
        "jiva_replica_rebuild_done_bytes",
        "gauge",
        "rebuild progress (bytes scanned)",
        [(f'{vl},replica="{_label(m.address)}"', (m.rebuild or {}).get("done", 0)) for m in reps],
    )
    metric(
        "jiva_replica_rebuild_total_bytes",
        "gauge",
        "bytes the current rebuild has to scan",
        [(f'{vl},replica="{_label(m.address)}"', (m.rebuild or {}).get("total", 0)) for m in reps],
    )
    metric(
        "jiva_replica_rebuild_eta_seconds",
        "gauge",
        "seconds the current rebuild has left at its recent rate (-1: not known or none)",
        [
            (f'{vl},replica="{_label(m.address)}"', _eta((m.rebuild or {}).get("eta_seconds")))
            for m in reps
        ],
    )
    pacer = getattr(vol, "pacer", None)  # (a test's stand-in volume may have none)
    allowed = pacer.status()["allowed_rate"] if pacer is not None else None
    metric(
        "jiva_volume_rebuild_allowed_rate_bytes",
        "gauge",
        "rate rebuilds may copy at, set by pacing from foreground latency (0: unlimited)",
        [(vl, allowed or 0)],
    )
    metric(
        "jiva_replica_errors_total",
        "counter",
        "times the replica was ejected",
        [(f'{vl},replica="{_label(m.address)}"', m.errors) for m in reps],
    )
    metric(
        "jiva_replica_lag_ejections_total",
        "counter",
        "times the replica was ejected for lagging far behind its peers",
        [(f'{vl},replica="{_label(m.address)}"', m.lag_ejections) for m in reps],
    )
    metric(
        "jiva_replica_answer_seconds",
        "gauge",
        "recent answer time of replicated writes (current members, last 8 s)",
        [
            (f'{vl},replica="{_label(m.address)}",quantile="{q}"', m.latency[k] / 1000)
            for m in reps
            if m.mode == "RW" and m.latency.get("p99_ms") is not None
            for q, k in (("0.5", "p50_ms"), ("0.99", "p99_ms"))
        ],
    )
    metric(
        "jiva_witness_up",
        "gauge",
        "1 while the witness answers",
        [(f'{vl},witness="{_label(w.address)}"', w.connected) for w in vol.coord.witnesses()],
    )
    return out.text()


async def get_metrics(request: web.Request) -> web.Response:
    """GET /metrics"""
    return metrics_response(render_metrics(request.app))


@needs_token
async def post_replica(request: web.Request) -> web.Response:
    """POST /v1/replicas {"address": "HOST:PORT"}: add a replica (it is rebuilt, then joins)."""
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("address"), str):
        return _error(400, 'expected a JSON object {"address": "HOST:PORT"}')
    vol = request.app[_VOLUME]
    try:
        m = await vol.add_replica(body["address"])
    except ValueError as e:
        status = 409 if "already" in str(e) else 400
        return _error(status, str(e))
    return web.json_response({"added": m.address, "replica": m.view()}, status=202)


@needs_token
async def delete_replica(request: web.Request) -> web.Response:
    """DELETE /v1/replicas/{address}: forget a replica (a member leaves under a new epoch)."""
    vol = request.app[_VOLUME]
    address = request.match_info["address"]
    try:
        await vol.remove_replica(address)
    except KeyError as e:
        return _error(404, str(e.args[0]))
    except ValueError as e:
        return _error(409 if "only current" in str(e) else 400, str(e))
    return web.json_response({"removed": address, "epoch": vol.epoch})


@needs_token
async def post_grow(request: web.Request) -> web.Response:
    """POST /v1/volume/grow {"size": bytes or "10G"}: grow the volume online (every replica
    first, then the size served); answers the status with `old_size`."""
    body = await json_body(request)
    if not isinstance(body, dict) or "size" not in body:
        return _error(400, 'expected a JSON object {"size": bytes or a size such as "10G"}')
    vol = request.app[_VOLUME]
    try:
        size = parse_size(body["size"])
        old = await vol.grow(size)
    except ValueError as e:
        return _error(400, str(e))
    except GrowRefused as e:
        return _error(409, str(e))
    except (VolumeNotReady, VolumeFenced) as e:
        return _error(409, f"volume {vol.name} does not serve: {e}")
    return web.json_response({**volume_status(request.app), "old_size": old})


QOS_KEYS = ("max_iops", "max_mbps")


async def get_qos(request: web.Request) -> web.Response:
    """GET /v1/volume/qos: {"name", "qos": {max_iops, max_mbps, throttled_ios,
    throttled_seconds}}."""
    vol = request.app[_VOLUME]
    return web.json_response({"name": vol.name, "qos": vol.qos.status()})


@needs_token
async def put_qos(request: web.Request) -> web.Response:
    """PUT /v1/volume/qos {"max_iops": N|null, "max_mbps": M|null}: change the QoS limits now
    (null: unlimited; a key left out keeps its limit); answers like GET /v1/volume/qos."""
    body = await json_body(request)
    usage = 'expected a JSON object {"max_iops": N or null, "max_mbps": MiB/s or null}'
    if not isinstance(body, dict) or not body:
        return _error(400, usage)
    unknown = sorted(set(body) - set(QOS_KEYS))
    if unknown:
        return _error(400, f"unknown key(s) {', '.join(unknown)}: {usage}")
    vol = request.app[_VOLUME]
    qos = vol.qos
    try:
        iops = check_iops(body["max_iops"]) if "max_iops" in body else qos.max_iops
        mbps = check_mbps(body["max_mbps"]) if "max_mbps" in body else qos.max_mbps
    except ValueError as e:
        return _error(400, str(e))
    qos.set_limits(iops, mbps)
    log.info("volume %s: QoS limits now max_iops=%s max_mbps=%s", vol.name, iops, mbps)
    return web.json_response({"name": vol.name, "qos": qos.status()})


@needs_token
async def post_scrub(request: web.Request) -> web.Response:
    """POST /v1/scrub [{"rate": MiB/s}]: start a scrub pass; 202 with the scrub status, 409 (with
    the running pass's status) while one runs."""
    body = await json_body(request)
    if body is None:
        body = {}
    rate = body.get("rate") if isinstance(body, dict) else None
    if (
        not isinstance(body, dict)
        or isinstance(rate, bool)
        or not (rate is None or (isinstance(rate, (int, float)) and rate > 0))
    ):
        return _error(400, 'expected no body or a JSON object {"rate": MiB/s (positive)}')
    vol = request.app[_VOLUME]
    if vol.state == "fenced":
        return _error(409, f"volume {vol.name} does not serve: {vol.reason}")
    try:
        st = vol.scrubber.start(rate * (1 << 20) if rate else None)
    except ScrubRunning as e:
        return web.json_response(
            {"error": str(e), "status": 409, "name": vol.name, "scrub": vol.scrubber.status()},
            status=409,
        )
    return web.json_response({"name": vol.name, "scrub": st}, status=202)


def _snapshot_refused(e: SnapshotRefused) -> web.Response:
    return _error(e.status, str(e))


@needs_token
async def post_snapshot(request: web.Request) -> web.Response:
    """POST /v1/snapshots {"name"}: take a crash-consistent snapshot on every current member
    (a write barrier); 201 {"snapshot": entry}; 400 bad name; 409 name exists, limit reached,
    a rebuild running, volume not serving."""
    body = await json_body(request)
    if not isinstance(body, dict) or "name" not in body:
        return _error(400, 'expected a JSON object {"name": "SNAPSHOT"}')
    vol = request.app[_VOLUME]
    try:
        snap = await vol.snapshots.create(body["name"])
    except SnapshotRefused as e:
        return _snapshot_refused(e)
    except (VolumeNotReady, VolumeFenced) as e:
        return _error(409, f"volume {vol.name} does not serve: {e}")
    return web.json_response({"name": vol.name, "snapshot": snap}, status=201)


async def get_snapshots(request: web.Request) -> web.Response:
    """GET /v1/snapshots: the snapshots every current member holds, oldest first, and the
    limit."""
    vol = request.app[_VOLUME]
    try:
        snaps = await vol.snapshots.entries()
    except SnapshotRefused as e:
        return _snapshot_refused(e)
    except (VolumeNotReady, VolumeFenced) as e:
        return _error(409, f"volume {vol.name} does not serve: {e}")
    return web.json_response({"name": vol.name, "snapshots": snaps, "limit": vol.snapshots.limit})


@needs_token
async def delete_snapshot(request: web.Request) -> web.Response:
    """DELETE /v1/snapshots/{name}: delete a snapshot on every current member (merged into its
    neighbour, space reclaimed); 200 {"deleted", "reclaimed"}; 404 unknown; 409 not now."""
    vol = request.app[_VOLUME]
    try:
        done = await vol.snapshots.delete(request.match_info["name"])
    except SnapshotRefused as e:
        return _snapshot_refused(e)
    except (VolumeNotReady, VolumeFenced) as e:
        return _error(409, f"volume {vol.name} does not serve: {e}")
    return web.json_response({"name": vol.name, **done})


def make_app(
    volume: Volume,
    token: str | None = None,
    portal: str | None = None,
    iqn: str | None = None,
    previous_token: str | None = None,
) -> web.Application:
    """Build the aiohttp application for one volume; mutating calls need `token` (or, during a
    rotation, `previous_token`) when one is set."""
    app = web.Application(middlewares=[_json_errors])
    app[_VOLUME] = volume
    tokens = [t for t in (token, previous_token if token else None) if t]
    app[_CONF] = {"tokens": tokens, "portal": portal, "iqn": iqn}
    # snapshot data, revert and import (transfer_routes.py, which imports this module)
    from jiva_engine.api.transfer_routes import add_routes

    add_routes(app, volume.transfers)
    app.router.add_get("/v1/volume", get_volume)
    app.router.add_get("/v1/stats", get_stats)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_post("/v1/replicas", post_replica)
    app.router.add_delete("/v1/replicas/{address}", delete_replica)
    app.router.add_post("/v1/volume/grow", post_grow)
    app.router.add_get("/v1/volume/qos", get_qos)
    app.router.add_put("/v1/volume/qos", put_qos)
    app.router.add_post("/v1/scrub", post_scrub)
    app.router.add_post("/v1/snapshots", post_snapshot)
    app.router.add_get("/v1/snapshots", get_snapshots)
    app.router.add_delete("/v1/snapshots/{name}", delete_snapshot)
    return app


class ApiServer:
    """A running API server; `await close()` stops it."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner = runner
        self.host = host
        self.port = port

    async def close(self) -> None:
        """Stop listening and release the app."""
        await self.runner.cleanup()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The server TLS context of `--api-tls-cert/--api-tls-key` (PEM files; TLS 1.2 or later).
    ValueError naming the file when they cannot be loaded."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load the API certificate {cert} / key {key}: {e}") from None
    return ctx


async def start_api(
    volume: Volume,
    host: str,
    port: int,
    *,
    token: str | None = None,
    portal: str | None = None,
    iqn: str | None = None,
    previous_token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ApiServer:
    """Serve the API on host:port (port 0 picks a free one, see ApiServer.port); HTTPS with
    `ssl_context` (see tls_context)."""
    runner = web.AppRunner(make_app(volume, token, portal, iqn, previous_token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    real_port = sockets[0].getsockname()[1] if sockets else port
    return ApiServer(runner, host, real_port)
