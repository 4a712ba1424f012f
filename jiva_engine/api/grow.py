"""`jiva grow`: grow a volume online through its controller's management API."""

from __future__ import annotations

import argparse
import sys

from jiva_engine.api.cli import human_size
from jiva_engine.api.client import ApiError, grow
from jiva_engine.util import config_error, parse_size, read_secret


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva grow`."""
    p.add_argument(
        "--api",
        required=True,
        metavar="HOST:PORT",
        help="the controller's API: HOST:PORT or https://HOST:PORT (CA file in $JIVA_API_CA)",
    )
    p.add_argument("--size", required=True, help="the new size: 512M, 10G, 1T or bytes (larger)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the API bearer token")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the API")


def _sized(n: int) -> str:
    return f"{human_size(n)} ({n} bytes)"


def run(args: argparse.Namespace) -> int:
    """Grow the volume; print its old and new size. 2 for bad options, 1 when refused."""
    try:
        size = parse_size(args.size)
        token = read_secret(args.token_file, "API token") if args.token_file else None
    except ValueError as e:
        return config_error("grow", str(e))
    try:
        st = grow(args.api, size, token, args.timeout)
    except (ApiError, ValueError) as e:
        print(f"jiva grow: {e}", file=sys.stderr)
        return 1
    old, new = int(st.get("old_size") or 0), int(st.get("size") or 0)
    if old == new:
        print(f"volume {st.get('name')} is {_sized(new)} already")
    else:
        print(f"volume {st.get('name')} grown from {_sized(old)} to {_sized(new)}")
    return 0
