"""`jiva witness`: run one volume's witness (a metadata-only voter) on this node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from jiva_engine.metrics import MetricsServer
from jiva_engine.protocol import voting
from jiva_engine.replica.store import StoreError
from jiva_engine.util import (
    config_error,
    parse_hostport,
    read_secret_pair,
    run_loop,
    setup_logging,
)
from jiva_engine.witness.server import WitnessServer
from jiva_engine.witness.store import WitnessStore

log = logging.getLogger("jiva.witness")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva witness` (DESIGN.md §4)."""
    p.add_argument("--volume", required=True, help="volume name this witness votes for")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve on")
    p.add_argument("--dir", required=True, help="folder for its metadata (a few KiB; created)")
    p.add_argument("--secret-file", help="shared secret the controller must prove (as replicas)")
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


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 2 on bad configuration."""
    setup_logging(args.log_level, f"witness[{args.volume}@{args.listen}]")
    try:
        host, port = parse_hostport(args.listen)
        secret, previous = read_secret_pair(args.secret_file, args.previous_secret_file)
        metrics = parse_hostport(args.metrics) if args.metrics else None
        store = WitnessStore(args.dir, args.volume)
    except (ValueError, StoreError) as e:
        return config_error("witness", str(e))
    return run_loop(
        _serve(
            store,
            host,
            port,
            secret.encode() if secret else None,
            previous.encode() if previous else None,
            metrics,
            args.listen,
        )
    )


async def _serve(
    store: WitnessStore,
    host: str,
    port: int,
    secret: bytes | None,
    previous: bytes | None = None,
    metrics: tuple[str, int] | None = None,
    listen: str = "",
) -> int:
    server = WitnessServer(store, secret, previous)
    exporter = MetricsServer(lambda: server.metrics_text(listen))
    if metrics is not None:
        try:
            await exporter.start(*metrics)
        except OSError as e:
            why = os.strerror(e.errno).lower() if e.errno else str(e)
            where = f"{metrics[0]}:{metrics[1]}"
            return config_error("witness", f"cannot serve --metrics on {where}: {why}")
    try:
        await server.start(host, port)
    except OSError as e:
        await exporter.stop()
        why = os.strerror(e.errno).lower() if e.errno else str(e)
        return config_error("witness", f"cannot listen on {host}:{port}: {why}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("witness of volume %s (id %s, epoch %s) in %s", store.volume, store.id,
             voting.epoch_text(store.meta["epoch"]), store.dir)  # fmt: skip
    await stop.wait()
    await exporter.stop()
    await server.stop()
    log.info("stopped")
    return 0
