"""`jiva clone`: copy a snapshot of one volume into another volume (docs/BACKUPS.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jiva_engine.api.cli import human_size
from jiva_engine.api.client import ApiError, api_base
from jiva_engine.backup.store import BackupError
from jiva_engine.backup.transfer import PARALLEL, Api, ImportFailed, Progress, Refused, clone
from jiva_engine.util import config_error, read_secret, run_loop

MiB = 1 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva clone`."""
    p.description = (
        "Copy snapshot S of the volume behind --from-api into the volume behind --api (a new, "
        "empty volume at least as large; its space beyond the source is unmapped). The copy "
        "runs through the target's exclusive import: the target refuses initiators while it "
        "runs and is readable, with the snapshot's contents, when this command returns."
    )
    p.add_argument("--from-api", required=True, metavar="HOST:PORT", help="the source's API")
    p.add_argument("--snapshot", required=True, metavar="S", help="the source snapshot")
    p.add_argument("--api", required=True, metavar="HOST:PORT", help="the target volume's API")
    p.add_argument("--token-file", metavar="FILE", help="file holding the target's API token")
    p.add_argument(
        "--from-token-file", metavar="FILE",
        help="file holding the source's API token (default: --token-file)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per API request")
    p.add_argument(
        "--parallel", type=int, default=PARALLEL, metavar="N",
        help=f"requests in flight (default {PARALLEL})",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Copy; 0 done, 1 refused or failed, 2 bad options."""
    try:
        api_base(args.api)
        api_base(args.from_api)
        token = read_secret(args.token_file, "API token") if args.token_file else None
        src_path = args.from_token_file or args.token_file
        src_token = read_secret(src_path, "source API token") if src_path else None
    except ValueError as e:
        return config_error("clone", str(e))
    prog = Progress(f"clone {args.snapshot}")

    async def go() -> dict[str, Any]:
        async with (
            Api(args.from_api, src_token, args.timeout) as src,
            Api(args.api, token, args.timeout) as dst,
        ):
            return await clone(src, args.snapshot, dst, args.parallel, prog)

    try:
        res = run_loop(go())
    except Refused as e:
        print(f"jiva clone: refused: {e}", file=sys.stderr)
        return 1
    except ImportFailed as e:
        prog.clear()
        print(f"jiva clone: failed: {e}", file=sys.stderr)
        print(f"jiva clone: the volume behind {args.api} holds a partial copy", file=sys.stderr)
        return 1
    except (BackupError, ApiError, OSError) as e:
        print(f"jiva clone: {e}", file=sys.stderr)
        return 1
    rate = res["bytes"] / MiB / max(res["took"], 1e-6)
    prog.finish(
        f"cloned {res['cloned']} into volume {res['volume']}: {human_size(res['bytes'])} of data"
        f" in {res['took']:.1f} s ({rate:.1f} MiB/s); the volume is readable now"
    )
    if args.json:
        print(json.dumps(res, indent=2))
    return 0
