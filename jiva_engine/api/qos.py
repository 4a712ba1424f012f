"""`jiva qos set|show`: a volume's QoS limits (max IOPS, max MiB/s) through its controller's
management API, changed at runtime without a restart."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tabulate import tabulate

from jiva_engine.api.client import ApiError, qos_set, qos_show
from jiva_engine.util import config_error, read_secret

UNLIMITED = "unlimited"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva qos`."""
    p.add_argument("action", choices=("set", "show"), help="what to do")
    p.add_argument(
        "--api",
        required=True,
        metavar="HOST:PORT",
        help="the controller's API: HOST:PORT or https://HOST:PORT (CA file in $JIVA_API_CA)",
    )
    p.add_argument(
        "--max-iops",
        metavar="N",
        help="set: most I/Os per second (a positive integer, or 'unlimited'); left out: unchanged",
    )
    p.add_argument(
        "--max-mbps",
        metavar="MIB_S",
        help="set: most MiB/s (a positive number, or 'unlimited'); left out: unchanged",
    )
    p.add_argument("--token-file", metavar="FILE", help="file holding the API bearer token")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the API")


def parse_limit(text: str, option: str, integer: bool) -> int | float | None:
    """A --max-iops/--max-mbps value: None for 'unlimited'; ValueError naming `option`."""
    if text.strip().lower() == UNLIMITED:
        return None
    kind = "a positive integer" if integer else "a positive number"
    try:
        value: int | float = int(text) if integer else float(text)
    except ValueError:
        raise ValueError(f"{option} must be {kind} or '{UNLIMITED}', not {text!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"{option} must be {kind} or '{UNLIMITED}', not {text!r}")
    return value


def render(doc: dict[str, Any]) -> str:
    """The QoS table of a volume."""
    q = doc.get("qos") or {}
    iops, mbps = q.get("max_iops"), q.get("max_mbps")
    rows = [
        ["volume", doc.get("name")],
        ["max IOPS", iops if iops else UNLIMITED],
        ["max MiB/s", f"{mbps:g}" if mbps else UNLIMITED],
        ["throttled I/Os", q.get("throttled_ios", 0)],
        ["throttled time", f"{float(q.get('throttled_seconds') or 0):.1f} s"],
    ]
    return tabulate(rows, tablefmt="plain")


def run(args: argparse.Namespace) -> int:
    """0 done; 1 refused or the API unreachable (its reason on stderr); 2 bad options."""
    limits: dict[str, Any] = {}
    try:
        if args.max_iops is not None:
            limits["max_iops"] = parse_limit(args.max_iops, "--max-iops", True)
        if args.max_mbps is not None:
            limits["max_mbps"] = parse_limit(args.max_mbps, "--max-mbps", False)
        if args.action == "set" and not limits:
            raise ValueError("'set' needs --max-iops and/or --max-mbps")
        if args.action == "show" and limits:
            raise ValueError("'show' takes no --max-iops/--max-mbps")
        token = read_secret(args.token_file, "API token") if args.token_file else None
    except ValueError as e:
        return config_error("qos", str(e))
    try:
        if args.action == "set":
            doc = qos_set(args.api, limits, token, args.timeout)
        else:
            doc = qos_show(args.api, args.timeout)
    except (ApiError, ValueError) as e:
        print(f"jiva qos {args.action}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0
