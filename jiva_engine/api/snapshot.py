"""`jiva snapshot create|list|delete|revert`: a volume's snapshots through its controller's
management API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from tabulate import tabulate

from jiva_engine.api.cli import human_size
from jiva_engine.api.client import (
    ApiError,
    snapshot_create,
    snapshot_delete,
    snapshot_list,
    snapshot_revert,
)
from jiva_engine.util import config_error, read_secret

ACTIONS = ("create", "list", "delete", "revert")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva snapshot`."""
    p.add_argument("action", choices=ACTIONS, help="what to do")
    p.add_argument("name", nargs="?", help="the snapshot (create, delete, revert)")
    p.add_argument(
        "--api",
        required=True,
        metavar="HOST:PORT",
        help="the controller's API: HOST:PORT or https://HOST:PORT (CA file in $JIVA_API_CA)",
    )
    p.add_argument("--token-file", metavar="FILE", help="file holding the API bearer token")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="seconds to wait for the API (default 10 for list, 60 for create, longer for delete"
        " and revert, which wait until the work is done)",
    )


def when(ts: Any) -> str:
    """A snapshot's creation time, in UTC."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(ts)))
    except (TypeError, ValueError):
        return "-"


def render(snaps: list[dict[str, Any]], limit: Any) -> str:
    """The snapshot table: name, created, size of the volume then, data its layer holds, data
    unique to it (what a delete frees)."""
    rows = [
        [
            s.get("name"),
            when(s.get("created")),
            human_size(int(s.get("size") or 0)),
            human_size(int(s.get("bytes") or 0)),
            human_size(int(s.get("unique") or 0)),
            s.get("id"),
        ]
        for s in snaps
    ]
    headers = ["NAME", "CREATED", "SIZE", "BYTES", "UNIQUE", "ID"]
    table = tabulate(rows, headers=headers, tablefmt="plain")
    return (
        f"{table}\n{len(snaps)} snapshot(s), limit {limit}"
        if rows
        else f"no snapshots (limit {limit})"
    )


def run(args: argparse.Namespace) -> int:
    """0 done; 1 refused or the API unreachable (its reason on stderr); 2 bad options."""
    if args.action != "list" and not args.name:
        return config_error("snapshot", f"'{args.action}' needs the snapshot's NAME")
    if args.action == "list" and args.name:
        return config_error("snapshot", "'list' takes no NAME")
    try:
        token = read_secret(args.token_file, "API token") if args.token_file else None
    except ValueError as e:
        return config_error("snapshot", str(e))
    timeout = args.timeout
    try:
        if args.action == "create":
            doc = snapshot_create(args.api, args.name, token, timeout or 60.0)
            snap = doc["snapshot"]
            text = (
                f"snapshot {snap.get('name')} of volume {doc.get('name')} taken ({snap.get('id')})"
            )
        elif args.action == "list":
            doc = snapshot_list(args.api, token, timeout or 10.0)
            text = render(doc["snapshots"], doc.get("limit"))
        elif args.action == "delete":
            doc = snapshot_delete(args.api, args.name, token, timeout or 600.0)
            text = (
                f"snapshot {doc.get('deleted')} of volume {doc.get('name')} deleted, "
                f"{human_size(int(doc.get('reclaimed') or 0))} reclaimed"
            )
        else:
            doc = _revert(args.api, args.name, token, timeout or 3600.0)
            text = (
                f"volume reverted to snapshot {doc.get('reverted')} "
                f"({human_size(int(doc.get('bytes') or 0))} copied)"
            )
    except (ApiError, ValueError) as e:
        print(f"jiva snapshot {args.action}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json else text)
    return 0


def _revert(api: str, name: str, token: str | None, timeout: float) -> dict[str, Any]:
    try:
        return snapshot_revert(api, name, token, timeout)
    except ApiError as e:
        if e.code != 404:
            raise
        doc = e.doc if isinstance(e.doc, dict) else {}
        if "snapshot" in str(doc.get("error", "")).lower():
            raise  # the API knows revert: the snapshot is unknown
        raise ApiError(
            f"{e}: this controller has no revert endpoint (POST /v1/snapshots/NAME/revert); "
            "upgrade it to revert snapshots",
            e.code,
            e.doc,
        ) from None
