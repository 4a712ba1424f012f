"""`jiva controller`: run one volume's replicated volume, its management API and iSCSI target."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from jiva_engine.controller import lag
from jiva_engine.controller.snapshots import check_limit
from jiva_engine.iscsi.cli import access_options, add_access_arguments
from jiva_engine.util import (
    config_error,
    parse_duration,
    parse_hostport,
    parse_size,
    read_secret_pair,
    run_loop,
    setup_logging,
)

log = logging.getLogger("jiva.controller")

IQN_PREFIX = "iqn.2026-11.org.jiva-py:"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva controller` (DESIGN.md §4)."""
    p.add_argument("--volume", required=True, help="volume name")
    p.add_argument("--api", required=True, metavar="HOST:PORT", help="management API address")
    p.add_argument(
        "--replica",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a replica of the volume (repeat for each)",
    )
    p.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a witness of the volume: a metadata-only voter (repeat for each)",
    )
    p.add_argument(
        "--quorum",
        choices=["majority", "off"],
        default="majority",
        help="majority (default): membership changes need a majority of the voters (replicas +"
        " witnesses) and a restart serves as soon as it reaches one; off: serve down to the"
        " last member, and a restart waits for every member of the newest membership",
    )
    p.add_argument(
        "--quorum-hold",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long I/O waits for a lost quorum before it fails with NOT READY (default 15)",
    )
    p.add_argument("--portal", metavar="HOST:PORT", help="iSCSI portal to serve the volume on")
    p.add_argument("--size", help="expected volume size (512M, 10G, ...); checked on replicas")
    p.add_argument("--replica-timeout", type=float, default=3.0, help="seconds (default 3)")
    p.add_argument(
        "--slow-replica-floor",
        default=f"{lag.DEFAULT_FLOOR:g}",
        metavar="SECONDS",
        help="eject a replica whose oldest request is unanswered this long (and factor x its"
        f" peers' p99) while its peers answer (default {lag.DEFAULT_FLOOR:g}); 0 or off: no"
        " lag ejection, only --replica-timeout",
    )
    p.add_argument(
        "--slow-replica-factor",
        default=f"{lag.DEFAULT_FACTOR:g}",
        metavar="K",
        help="how far behind its peers' p99 answer time a replica must be to be ejected"
        f" (default {lag.DEFAULT_FACTOR:g}); 0 or off: no lag ejection",
    )
    p.add_argument(
        "--slow-replica-window",
        default=f"{lag.DEFAULT_WINDOW:g}",
        metavar="SECONDS",
        help="eject a replica whose p99 answer time stays factor x its peers' for this long"
        f" (default {lag.DEFAULT_WINDOW:g}); 0 or off: only stalls eject",
    )
    p.add_argument("--secret-file", help="file holding the controller<->replica shared secret")
    p.add_argument(
        "--previous-secret-file",
        help="the shared secret being rotated out: presented to a replica or witness that refuses"
        " the current one",
    )
    p.add_argument("--token-file", help="file holding the API bearer token for mutating calls")
    p.add_argument(
        "--previous-token-file",
        help="the API token being rotated out: also accepted until the rotation ends",
    )
    p.add_argument(
        "--api-tls-cert",
        metavar="PEM",
        help="serve the API over HTTPS with this certificate (chain); needs --api-tls-key",
    )
    p.add_argument("--api-tls-key", metavar="PEM", help="the private key of --api-tls-cert")
    add_access_arguments(p)
    p.add_argument("--rebuild-rate", type=float, help="rebuild throttle in MiB/s (default none)")
    p.add_argument(
        "--max-iops",
        type=int,
        metavar="N",
        help="QoS: most reads+writes+unmaps per second the initiators get (default unlimited;"
        " a token bucket with a 0.1 s burst; internal traffic is not counted)",
    )
    p.add_argument(
        "--max-mbps",
        type=float,
        metavar="MIB_S",
        help="QoS: most MiB/s read+written by the initiators (default unlimited)",
    )
    p.add_argument(
        "--rebuild-pacing",
        choices=("on", "off"),
        default="on",
        help="slow rebuilds down while foreground I/O latency rises (default on; under"
        " --rebuild-rate when both are set)",
    )
    p.add_argument(
        "--scrub-rate",
        type=float,
        default=64.0,
        metavar="MIB_S",
        help="scrub pace in MiB/s of volume (default 64); `jiva scrub --rate` overrides it once",
    )
    p.add_argument(
        "--scrub-interval",
        default="off",
        metavar="DURATION",
        help="start a scrub this long after the previous one finished (or after start): 30m,"
        " 12h, 7d...; 0 or off (default): only on request (POST /v1/scrub, `jiva scrub`)",
    )
    p.add_argument(
        "--max-snapshots",
        type=int,
        default=64,
        metavar="N",
        help="most snapshots the volume keeps, 1..250 (default 64): creating one more is refused"
        " with a clear error (never taken implicitly, never a faulted volume)",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def run(args: argparse.Namespace) -> int:
    """Validate the options, then serve until SIGTERM/SIGINT."""
    setup_logging(args.log_level, f"controller[{args.volume}]")
    try:
        cfg = _config(args)
    except ValueError as e:
        return config_error("controller", str(e))
    try:
        return run_loop(_serve(cfg))
    except (OSError, RuntimeError) as e:
        print(f"jiva controller: {e}", file=sys.stderr)
        return 1


def _off_or_number(option: str, text: str) -> float:
    """A --slow-replica-* value: a number >= 0, or 0/off (disabled)."""
    try:
        return lag.parse_seconds(text)
    except ValueError:
        raise ValueError(f"{option} must be a number >= 0 or off, not {text!r}") from None


def _config(args: argparse.Namespace) -> dict[str, Any]:
    if not args.replica:
        raise ValueError("at least one --replica HOST:PORT is required")
    replicas = []
    for r in args.replica:
        host, port = parse_hostport(r)
        addr = f"{host}:{port}"
        if addr in replicas:
            raise ValueError(f"replica {addr} given twice")
        replicas.append(addr)
    witnesses = []
    for w in args.witness:
        host, port = parse_hostport(w)
        addr = f"{host}:{port}"
        if addr in replicas or addr in witnesses:
            raise ValueError(f"witness {addr} given twice or also as a replica")
        witnesses.append(addr)
    if args.quorum_hold <= 0:
        raise ValueError("--quorum-hold must be positive")
    if args.replica_timeout <= 0:
        raise ValueError("--replica-timeout must be positive")
    slow = lag.LagPolicy(
        *(
            _off_or_number(f"--slow-replica-{opt}", getattr(args, f"slow_replica_{opt}"))
            for opt in ("floor", "factor", "window")
        )
    )
    if args.rebuild_rate is not None and args.rebuild_rate <= 0:
        raise ValueError("--rebuild-rate must be positive (MiB/s)")
    if args.scrub_rate <= 0:
        raise ValueError("--scrub-rate must be positive (MiB/s)")
    if args.max_iops is not None and args.max_iops <= 0:
        raise ValueError(
            f"--max-iops must be a positive integer (I/Os per second), not {args.max_iops}"
        )
    if args.max_mbps is not None and not 0 < args.max_mbps < float("inf"):
        raise ValueError(f"--max-mbps must be a positive number (MiB/s), not {args.max_mbps:g}")
    scrub_interval = parse_duration(args.scrub_interval)
    max_snapshots = check_limit(args.max_snapshots)
    access = access_options(args)
    secret, previous = read_secret_pair(args.secret_file, args.previous_secret_file)
    token, previous_token = read_secret_pair(
        args.token_file, args.previous_token_file, "API token", "--token-file"
    )
    if bool(args.api_tls_cert) != bool(args.api_tls_key):
        raise ValueError("--api-tls-cert and --api-tls-key go together")
    return {
        "volume": args.volume,
        "api": parse_hostport(args.api),
        "api_tls": (args.api_tls_cert, args.api_tls_key) if args.api_tls_cert else None,
        "portal": parse_hostport(args.portal, 3260) if args.portal else None,
        "replicas": replicas,
        "witnesses": witnesses,
        "quorum": args.quorum,
        "hold": args.quorum_hold,
        "size": parse_size(args.size) if args.size else None,
        "timeout": args.replica_timeout,
        "slow_replica": slow,
        # presented in this order: the current secret, then (a rotation) the previous one
        "secret": tuple(s.encode() for s in (secret, previous) if s) or None,
        "token": token,
        "previous_token": previous_token,
        "access": access,
        "rebuild_rate": args.rebuild_rate * (1 << 20) if args.rebuild_rate else None,
        "rebuild_pacing": args.rebuild_pacing == "on",
        "scrub_rate": args.scrub_rate * (1 << 20),
        "scrub_interval": scrub_interval,
        "max_snapshots": max_snapshots,
        "max_iops": args.max_iops,
        "max_mbps": args.max_mbps,
    }


async def _serve(cfg: dict) -> int:
    from jiva_engine.api.server import start_api, tls_context
    from jiva_engine.controller.volume import Volume
    from jiva_engine.iscsi.target import TargetConfig, start_target

    volume = Volume(
        cfg["volume"],
        cfg["replicas"],
        witnesses=cfg["witnesses"],
        quorum=cfg["quorum"],
        hold=cfg["hold"],
        size=cfg["size"],
        replica_timeout=cfg["timeout"],
        slow_replica=cfg["slow_replica"],
        secret=cfg["secret"],
        rebuild_rate=cfg["rebuild_rate"],
        rebuild_pacing=cfg["rebuild_pacing"],
        scrub_rate=cfg["scrub_rate"],
        scrub_interval=cfg["scrub_interval"],
        max_snapshots=cfg["max_snapshots"],
        max_iops=cfg["max_iops"],
        max_mbps=cfg["max_mbps"],
    )
    iqn = IQN_PREFIX + cfg["volume"]
    portal = "{}:{}".format(*cfg["portal"]) if cfg["portal"] else None
    target = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tls = tls_context(*cfg["api_tls"]) if cfg["api_tls"] else None  # before anything starts
    await volume.start()
    api = await start_api(
        volume,
        *cfg["api"],
        token=cfg["token"],
        previous_token=cfg["previous_token"],
        portal=portal,
        iqn=iqn,
        ssl_context=tls,
    )
    try:
        if cfg["portal"]:
            tcfg = TargetConfig(iqn, **cfg["access"])
            portal_host, portal_port = cfg["portal"]
            # revert and import need the volume to themselves: no login while one runs, and
            # none starts while an initiator is logged in (controller/transfer.py, Gate)
            gate = volume.transfers.gate
            target = await start_target(
                volume, portal_host, portal_port, tcfg, login_gate=gate.login_refusal
            )
            gate.sessions = lambda: target.sessions if target is not None else 0
        log.info("controller for %s: api %s:%d, portal %s", cfg["volume"], *cfg["api"], portal)
        await stop.wait()
        log.info("stopping")
        return 0
    finally:
        if target is not None:
            await target.close()
        await api.close()
        await volume.close()
