"""`jiva scrub`: run a scrub pass of a volume through its controller's management API and wait
for its result."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from tabulate import tabulate

from jiva_engine.api.cli import human_size
from jiva_engine.api.client import ApiError, fetch_status, scrub
from jiva_engine.util import read_secret

POLL = 0.5  # seconds between status polls while the pass runs


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva scrub`."""
    p.add_argument(
        "--api",
        required=True,
        metavar="HOST:PORT",
        help="the controller's API: HOST:PORT or https://HOST:PORT (CA file in $JIVA_API_CA)",
    )
    p.add_argument("--json", action="store_true", help="print the final scrub status JSON")
    p.add_argument("--rate", type=float, metavar="MIB_S", help="pace in MiB/s (this pass only)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the API bearer token")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each API call")


def when(ts: float | None) -> str:
    """A wall-clock time of the status JSON, in UTC ("-" for none)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def render(st: dict[str, Any]) -> str:
    """The final table: counters and result of the pass."""
    took = (st.get("finished") or 0) - (st.get("started") or 0)
    rows = [
        ["result", st.get("result")],
        ["scrubbed", human_size(int(st.get("done_bytes") or 0))],
        ["block copies checked", st.get("blocks_checked", 0)],
        ["mismatched blocks", st.get("mismatched", 0)],
        ["repaired block copies", st.get("repaired", 0)],
        ["unrepaired blocks", st.get("unrepaired", 0)],
        ["started", when(st.get("started"))],
        ["took", f"{took:.1f} s" if st.get("finished") else "-"],
    ]
    return tabulate(rows, tablefmt="plain")


def _progress(st: dict[str, Any], final: bool = False) -> None:
    line = (
        f"scrub pass {st.get('pass')}: {100 * float(st.get('progress') or 0):5.1f}%"
        f" ({human_size(int(st.get('done_bytes') or 0))} of"
        f" {human_size(int(st.get('total_bytes') or 0))}), {st.get('repaired', 0)} repaired,"
        f" {st.get('unrepaired', 0)} unrepaired"
    )
    if sys.stderr.isatty():
        print("\r" + line, end="\n" if final else "", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Start (or join) a scrub and wait for it: 0 clean or repaired, 2 when unrepaired corruption
    remains, 1 on errors (API unreachable or refusing, a failed or cancelled pass)."""
    if args.rate is not None and args.rate <= 0:
        print("jiva scrub: error: --rate must be positive (MiB/s)", file=sys.stderr)
        return 1
    try:
        token = read_secret(args.token_file, "API token") if args.token_file else None
    except ValueError as e:
        print(f"jiva scrub: error: {e}", file=sys.stderr)
        return 1
    try:
        try:
            st = scrub(args.api, args.rate, token, args.timeout)["scrub"]
        except ApiError as e:
            doc = e.doc if isinstance(e.doc, dict) else {}
            if e.code != 409 or not isinstance(doc.get("scrub"), dict):
                raise
            st = doc["scrub"]  # one runs already: wait for it
            print(f"jiva scrub: joining the running scrub (pass {st.get('pass')})", file=sys.stderr)
        ours = st.get("pass")
        last_shown = 0.0
        while True:
            cur = fetch_status(args.api, args.timeout).get("scrub") or {}
            if cur.get("pass") != ours or not cur.get("running"):
                break
            if time.monotonic() - last_shown >= (1.0 if sys.stderr.isatty() else 5.0):
                _progress(cur)
                last_shown = time.monotonic()
            time.sleep(POLL)
    except (ApiError, ValueError) as e:
        print(f"jiva scrub: {e}", file=sys.stderr)
        return 1
    if cur.get("pass") != ours:  # a newer pass started meanwhile: ours is not shown any more
        print(f"jiva scrub: pass {ours} ended, pass {cur.get('pass')} runs now", file=sys.stderr)
        return 1
    _progress(cur, final=True)
    print(json.dumps(cur, indent=2) if args.json else render(cur))
    result = str(cur.get("result"))
    if result in ("clean", "repaired"):
        return 0
    if result == "unrepaired":
        return 2
    print(f"jiva scrub: scrub {result}", file=sys.stderr)
    return 1
