"""`jiva backup create | list | restore | verify | delete | prune | gc`: backups of volume
snapshots in a backup store folder (docs/BACKUPS.md).

Exit codes: 0 done, 1 failed or refused (the message says why), 2 bad options, 3 the backup is
damaged (a block missing or failing its sha256: the message names it)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from tabulate import tabulate

from jiva_engine.api.cli import human_size
from jiva_engine.api.client import ApiError, api_base
from jiva_engine.backup.store import (
    DEFAULT_BLOCK_SIZE,
    BackupError,
    BackupStore,
    BadBlock,
    StoreBusy,
    valid_name,
)
from jiva_engine.backup.transfer import (
    PARALLEL,
    Api,
    ImportFailed,
    Progress,
    Refused,
    create_backup,
    restore_backup,
)
from jiva_engine.util import config_error, parse_size, read_secret, run_loop

MiB = 1 << 20
DAMAGED = 3


def _common(p: argparse.ArgumentParser, api: bool = False) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--lock-timeout", type=float, default=600.0, metavar="S",
        help="seconds to wait while another writer holds the store (default 600)",
    )  # fmt: skip
    if api:
        p.add_argument("--token-file", metavar="FILE", help="file holding the API bearer token")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds per API request")
        p.add_argument(
            "--parallel", type=int, default=PARALLEL, metavar="N",
            help=f"requests in flight (default {PARALLEL})",
        )  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva backup` and its actions."""
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser(
        "create",
        help="write a snapshot of a volume to a backup store",
        description="Write snapshot S of the volume behind --api to the backup store DIR as "
        "backup B: only the chunks the store does not hold yet are written.",
    )
    c.add_argument("--api", required=True, metavar="HOST:PORT", help="the controller's API")
    c.add_argument("--snapshot", required=True, metavar="S", help="the snapshot to back up")
    c.add_argument("--to", required=True, metavar="DIR", help="the backup store (made if new)")
    c.add_argument("--name", required=True, metavar="B", help="the backup's name (new)")
    c.add_argument(
        "--block-size", default=str(DEFAULT_BLOCK_SIZE), metavar="SIZE",
        help="chunk size (default 1M; 4 KiB multiple up to 16M); a store deduplicates only "
        "between backups of the same chunk size",
    )  # fmt: skip
    c.add_argument("--no-compress", action="store_true", help="store blocks uncompressed")
    _common(c, api=True)

    ls = sub.add_parser("list", help="list the backups in a store")
    ls.add_argument("--from", dest="store", required=True, metavar="DIR", help="the backup store")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")

    r = sub.add_parser(
        "restore",
        help="write a backup into a volume (no initiator logged in, at least as large)",
        description="Write backup B into the volume behind --api through its exclusive import "
        "(refused while an initiator is logged in, or when the volume is smaller than the "
        "backup). Every block is checked against its sha256 before it is written; chunks of "
        "zeroes and the volume's space beyond the backup are unmapped. A damaged block stops "
        "the restore with its name (exit 3) and the volume then holds a partial restore.",
    )
    r.add_argument("--from", dest="store", required=True, metavar="DIR", help="the backup store")
    r.add_argument("--backup", required=True, metavar="B", help="the backup to restore")
    r.add_argument("--api", required=True, metavar="HOST:PORT", help="the target's API")
    r.add_argument(
        "--check-first", action="store_true",
        help="check every block before the import begins (reads the backup twice; a damaged "
        "backup then leaves the volume untouched)",
    )  # fmt: skip
    _common(r, api=True)

    v = sub.add_parser("verify", help="check every block of a backup (sha256)")
    v.add_argument("--from", dest="store", required=True, metavar="DIR", help="the backup store")
    v.add_argument("--backup", required=True, metavar="B", help="the backup to check")
    _common(v)

    d = sub.add_parser("delete", help="delete a backup (blocks other backups use are kept)")
    d.add_argument("--from", dest="store", required=True, metavar="DIR", help="the backup store")
    d.add_argument("--backup", required=True, metavar="B", help="the backup to delete")
    _common(d)

    pr = sub.add_parser("prune", help="keep the newest N backups of a volume, delete the rest")
    pr.add_argument("--from", dest="store", required=True, metavar="DIR", help="the backup store")
    pr.add_argument("--volume", required=True, metavar="V", help="the volume whose backups")
    pr.add_argument("--keep", required=True, type=int, metavar="N", help="how many to keep (>= 1)")
    _common(pr)

    g = sub.add_parser("gc", help="remove blocks no backup uses (an interrupted backup's)")
    g.add_argument("--from", dest="store", required=True, metavar="DIR", help="the backup store")
    _common(g)


def _say(msg: str) -> None:
    print(f"jiva backup: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(store: BackupStore, exclusive: bool, what: str, timeout: float) -> Iterator[None]:
    """The store's lock; says once on stderr when it has to wait for another process."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(store.lock(exclusive, what))
        except StoreBusy as e:
            if timeout <= 0:
                raise
            _say(f"waiting up to {timeout:g} s: {e}")
            stack.enter_context(store.lock(exclusive, what, timeout))
        yield


def _rate(n: float, took: float) -> str:
    return f"{n / MiB / max(took, 1e-6):.1f} MiB/s"


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def _token(path: str | None) -> str | None:
    return read_secret(path, "API token") if path else None


def run(args: argparse.Namespace) -> int:
    """Run one action; the exit code (module docstring)."""
    try:
        return {
            "create": _create,
            "list": _list,
            "restore": _restore,
            "verify": _verify,
            "delete": _delete,
            "prune": _prune,
            "gc": _gc,
        }[args.action](args)
    except BadBlock as e:
        _say(str(e))
        return DAMAGED
    except (BackupError, ApiError, OSError) as e:
        _say(str(e))
        return 1


def _create(args: argparse.Namespace) -> int:
    try:
        api_base(args.api)
        token = _token(args.token_file)
        block_size = parse_size(args.block_size)
        if not valid_name(args.name):
            raise ValueError(f"invalid backup name {args.name!r} (letters, digits, '.', '_', '-')")
    except ValueError as e:
        return config_error("backup create", str(e))
    store = BackupStore(args.to, create=True)
    prog = Progress(f"backup {args.name}")

    async def go() -> dict[str, Any]:
        async with Api(args.api, token, args.timeout) as api:
            return await create_backup(
                api, store, args.snapshot, args.name, block_size, not args.no_compress,
                args.parallel, prog,
            )  # fmt: skip

    with _locked(store, True, f"backup create {args.name}", args.lock_timeout):
        try:
            doc = run_loop(go())
        except BaseException:
            prog.clear()
            raise
    prog.finish(
        f"backup {doc['name']} of {doc['volume']}@{doc['snapshot']}: read"
        f" {human_size(prog.done)} in {prog.took:.1f} s ({_rate(prog.done, prog.took)}),"
        f" {human_size(doc['bytes_new'])} new, store grew by {human_size(doc['bytes_stored_new'])}"
    )
    summary = {k: v for k, v in doc.items() if k != "blocks"}
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def _list(args: argparse.Namespace) -> int:
    store = BackupStore(args.store)
    backups = store.backups()
    if args.json:
        print(json.dumps({"store": str(store.root), "backups": backups, **store.usage()}, indent=2))
        return 0
    rows = []
    for d in backups:
        if "error" in d:
            rows.append([d["name"], "?", "?", "?", "?", "?", "?", d["error"]])
            continue
        rows.append([
            d["name"], d.get("volume"), d.get("snapshot"), _when(d.get("created")),
            human_size(d["size"]), human_size(d.get("bytes", 0)),
            human_size(d.get("bytes_stored_new", 0)), "",
        ])  # fmt: skip
    head = ["backup", "volume", "snapshot", "created (UTC)", "size", "data", "stored new", ""]
    print(tabulate(rows, head, tablefmt="plain") if rows else "no backups")
    u = store.usage()
    print(
        f"store {store.root}: {len(backups)} backups, {u['blocks']} blocks, {human_size(u['bytes'])}"
    )
    return 0


def _restore(args: argparse.Namespace) -> int:
    try:
        api_base(args.api)
        token = _token(args.token_file)
    except ValueError as e:
        return config_error("backup restore", str(e))
    store = BackupStore(args.store)
    prog = Progress(f"restore {args.backup}")

    async def go() -> dict[str, Any]:
        async with Api(args.api, token, args.timeout) as api:
            return await restore_backup(
                api, store, args.backup, args.parallel, prog, args.check_first
            )

    with _locked(store, False, f"backup restore {args.backup}", args.lock_timeout):
        try:
            res = run_loop(go())
        except Refused as e:
            prog.clear()
            _say(f"restore refused: {e}")
            return 1
        except ImportFailed as e:
            prog.clear()
            _say(f"restore failed: {e}")
            _say(f"the volume behind {args.api} holds a partial restore: restore again")
            return DAMAGED if isinstance(e.cause, BadBlock) else 1
    prog.finish(
        f"restored backup {args.backup} into volume {res['volume']}: {human_size(res['bytes'])}"
        f" of data in {res['took']:.1f} s ({_rate(res['bytes'], res['took'])}), every block checked"
    )
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    store = BackupStore(args.store)
    with _locked(store, False, f"backup verify {args.backup}", args.lock_timeout):
        doc = store.manifest(args.backup)
        bad = store.verify(args.backup)
    if args.json:
        out = {"backup": args.backup, "blocks": len(doc["blocks"]), "bad": [str(b) for b in bad]}
        print(json.dumps(out, indent=2))
    for b in bad:
        _say(str(b))
    if bad:
        _say(f"backup {args.backup}: {len(bad)} of {len(doc['blocks'])} blocks damaged or missing")
        return DAMAGED
    if not args.json:
        print(f"backup {args.backup}: all {len(doc['blocks'])} blocks check out (sha256)")
    return 0


def _delete(args: argparse.Namespace) -> int:
    store = BackupStore(args.store)
    res = store.delete(args.backup, args.lock_timeout)
    return _freed(args, res)


def _prune(args: argparse.Namespace) -> int:
    if args.keep < 1:
        return config_error("backup prune", "--keep must be at least 1")
    store = BackupStore(args.store)
    res = store.prune(args.volume, args.keep, args.lock_timeout)
    return _freed(args, res)


def _gc(args: argparse.Namespace) -> int:
    store = BackupStore(args.store)
    return _freed(args, store.gc(args.lock_timeout))


def _freed(args: argparse.Namespace, res: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    if "deleted" in res:
        print(f"deleted: {', '.join(res['deleted']) or 'nothing'}")
    if "kept" in res:
        print(f"kept: {', '.join(res['kept']) or 'nothing'}")
    print(
        f"removed {res['blocks_removed']} blocks no backup uses ({human_size(res['bytes_freed'])})"
    )
    return 0
