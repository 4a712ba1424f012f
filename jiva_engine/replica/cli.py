"""`jiva replica`: run one replica process for one volume on this node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from jiva_engine.metrics import MetricsServer
from jiva_engine.replica.server import ReplicaServer
from jiva_engine.replica.store import ReplicaStore, StoreError
from jiva_engine.util import (
    config_error,
    parse_hostport,
    parse_size,
    read_secret_pair,
    run_loop,
    setup_logging,
)

log = logging.getLogger("jiva.replica")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva replica` (DESIGN.md §4)."""
    p.add_argument("--volume", required=True, help="volume name this replica belongs to")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve on")
    p.add_argument("--dir", required=True, help="data directory (created if missing)")
    p.add_argument("--size", required=True, help="volume size: 512M, 10G, 1T or bytes")
    p.add_argument("--secret-file", help="shared secret the controller must prove")
    p.add_argument(
        "--previous-secret-file",
        help="the secret being rotated out: also accepted until the rotation ends",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="also serve Prometheus metrics (GET /metrics, no token) on HOST:PORT; default off",
    )
    p.add_argument(
        "--sync-interval",
        type=float,
        default=5.0,
        help="seconds between background fdatasync + dirty-map clearing (default 5); keep it"
        " above the controller's --replica-timeout plus --writer-silence, so a write still"
        " waiting on a stuck peer keeps its region dirty if the controller dies or is cut off",
    )
    p.add_argument(
        "--writer-silence",
        type=float,
        default=1.5,
        help="seconds without a frame from a controller that wrote here after which its dirty"
        " regions are kept until a controller clears them (default 1.5; controllers ping every"
        " 0.5 s)",
    )
    p.add_argument("--region-size", default="1M", help="dirty-map region size for a new DIR")


def run(args: argparse.Namespace) -> int:
    """Start the replica and serve until SIGTERM/SIGINT; 2 on bad configuration."""
    setup_logging(args.log_level, f"replica[{args.volume}@{args.listen}]")
    try:
        size = parse_size(args.size)
        region = parse_size(args.region_size)
        host, port = parse_hostport(args.listen)
        secret, previous = read_secret_pair(args.secret_file, args.previous_secret_file)
        metrics = parse_hostport(args.metrics) if args.metrics else None
    except ValueError as e:
        return config_error("replica", str(e))
    if args.sync_interval <= 0:
        return config_error("replica", "--sync-interval must be positive")
    if args.writer_silence <= 0:
        return config_error("replica", "--writer-silence must be positive")
    try:
        store = ReplicaStore(args.dir, args.volume, size, region)
    except StoreError as e:
        return config_error("replica", str(e))
    except OSError as e:
        return config_error("replica", f"cannot open {args.dir}: {e}")
    server = ReplicaServer(
        store,
        secret.encode() if secret else None,
        args.sync_interval,
        args.writer_silence,
        previous.encode() if previous else None,
    )
    return run_loop(_serve(server, host, port, metrics, args.listen))


async def _serve(
    server: ReplicaServer,
    host: str,
    port: int,
    metrics: tuple[str, int] | None = None,
    listen: str = "",
) -> int:
    store = server.store
    exporter = MetricsServer(lambda: server.metrics_text(listen))
    try:
        if metrics is not None:
            try:
                await exporter.start(*metrics)
            except OSError as e:
                why = os.strerror(e.errno).lower() if e.errno else str(e)
                store.close(clean=True)
                where = f"{metrics[0]}:{metrics[1]}"
                return config_error("replica", f"cannot serve --metrics on {where}: {why}")
        await server.start(host, port)
    except OSError as e:
        await exporter.stop()
        store.close(clean=True)
        why = os.strerror(e.errno).lower() if e.errno else str(e)
        return config_error("replica", f"cannot listen on {host}:{port}: {why}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "serving volume %s (%d bytes, epoch %s, mode %s, %d dirty regions) from %s",
        store.volume,
        store.size,
        store.epoch,
        store.mode,
        len(store.dirty),
        store.dir,
    )
    await stop.wait()
    log.info("shutting down")
    await exporter.stop()
    await server.stop()
    log.info("stopped cleanly")
    return 0
