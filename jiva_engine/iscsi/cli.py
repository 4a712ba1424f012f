"""`jiva target`: serve one local file as LUN 0 of an iSCSI target (no replication)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from jiva_engine.filevolume import FileVolume
from jiva_engine.iscsi.target import IQN_PREFIX, TargetConfig, start_target
from jiva_engine.util import (
    config_error,
    parse_hostport,
    parse_size,
    read_secret,
    run_loop,
    setup_logging,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva target`."""
    p.add_argument("--file", required=True, help="backing file (created sparse if missing)")
    p.add_argument("--portal", default="0.0.0.0:3260", help="HOST:PORT to listen on [%(default)s]")
    p.add_argument("--size", help="size when creating (or growing) the file: 512M, 10G, ...")
    p.add_argument("--iqn", help=f"target name [{IQN_PREFIX}<file stem>]")
    add_access_arguments(p)
    p.add_argument("--nop-interval", type=float, default=10.0, help="keepalive NOP-In after N s")
    p.add_argument("--log-level", default="INFO", help="logging level [%(default)s]")


def add_access_arguments(p: argparse.ArgumentParser) -> None:
    """Who may log in: CHAP (one-way, mutual) and the initiator allow-list (`jiva target` and
    `jiva controller` take the same options)."""
    p.add_argument("--chap-user", help="require CHAP from initiators with this user name")
    p.add_argument("--chap-secret-file", help="file holding the CHAP secret")
    p.add_argument("--mutual-user", help="user name the target answers mutual CHAP with")
    p.add_argument("--mutual-secret-file", help="file holding the mutual CHAP secret")
    p.add_argument(
        "--allow-initiator",
        action="append",
        default=[],
        metavar="IQN",
        help="only these initiator names may log in (repeatable; default: any)",
    )


def _chap_secret(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    text = read_secret(path, what)
    if not 12 <= len(text) <= 255:
        raise ValueError(f"{what} in {path} must be 12 to 255 characters (RFC 7143 §12.1.3)")
    return text


def access_options(args: argparse.Namespace) -> dict:
    """The checked access options as TargetConfig keyword arguments (ValueError with a clear
    message when they do not fit together or a secret file is unusable)."""
    if bool(args.chap_user) != bool(args.chap_secret_file):
        raise ValueError("--chap-user and --chap-secret-file go together")
    if bool(args.mutual_user) != bool(args.mutual_secret_file):
        raise ValueError("--mutual-user and --mutual-secret-file go together")
    if args.mutual_user and not args.chap_user:
        raise ValueError("mutual CHAP needs --chap-user as well")
    chap = _chap_secret(args.chap_secret_file, "CHAP secret")
    mutual = _chap_secret(args.mutual_secret_file, "mutual CHAP secret")
    if chap and mutual and chap == mutual:
        raise ValueError("the mutual CHAP secret must differ from the CHAP secret")
    return {
        "chap_user": args.chap_user,
        "chap_secret": chap,
        "mutual_user": args.mutual_user,
        "mutual_secret": mutual,
        "allowed_initiators": tuple(args.allow_initiator),
    }


def build_config(args: argparse.Namespace, stem: str) -> TargetConfig:
    """Turn CLI options into a TargetConfig (ValueError with a clear message on bad input)."""
    access = access_options(args)
    iqn = args.iqn or f"{IQN_PREFIX}{stem}"
    if not (iqn.startswith("iqn.") or iqn.startswith("eui.") or iqn.startswith("naa.")):
        raise ValueError(f"invalid target name {iqn!r}: must start with iqn., eui. or naa.")
    return TargetConfig(iqn=iqn, nop_interval=args.nop_interval, **access)


async def _serve(args: argparse.Namespace) -> int:
    host, port = parse_hostport(args.portal, 3260)
    size = parse_size(args.size) if args.size else None
    path = Path(args.file)
    if not path.exists() and size is None:
        raise ValueError(f"{path} does not exist: give --size to create it")
    config = build_config(args, path.stem)
    vol = FileVolume(path, size)
    server = await start_target(vol, host, port, config)
    h, p = server.address
    print(f"serving {path} ({vol.size} bytes) as {config.iqn} lun 0 on {h}:{p}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    await vol.close()
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of `jiva target`; returns the exit status."""
    setup_logging(args.log_level, "target")
    try:
        return run_loop(_serve(args))
    except (ValueError, OSError) as e:
        return config_error("target", str(e))
