"""`jiva status`: show a volume and its replicas from the controller's management API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from tabulate import tabulate

from jiva_engine.api.client import ApiError, fetch_status
from jiva_engine.protocol.voting import epoch_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `jiva status`."""
    p.add_argument(
        "--api",
        required=True,
        metavar="HOST:PORT",
        help="the controller's API: HOST:PORT or https://HOST:PORT (CA file in $JIVA_API_CA)",
    )
    p.add_argument("--json", action="store_true", help="print the status JSON instead of a table")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the API")


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def scrub_text(sc: dict[str, Any]) -> str:
    """One line about the scrub: running (progress) or the last result and when it ended."""
    if sc.get("running"):
        return f"running, {100 * float(sc.get('progress') or 0):.0f}% done"
    if not sc.get("last_result"):
        return "never"
    ended = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(sc.get("last_finished") or 0))
    return f"{sc['last_result']} ({ended})"


def transfer_text(tr: dict[str, Any]) -> str:
    """One line about the running (else last) snapshot export, revert or import."""
    what = {"revert": "revert to", "import": "import from", "export": "export of"}
    head = f"{what.get(tr.get('kind') or '', tr.get('kind'))} {tr.get('source')}"
    done, total = int(tr.get("done") or 0), int(tr.get("total") or 0)
    rate = f"{human_size(float(tr.get('rate') or 0))}/s"
    if tr.get("result") is None:
        pct = f"{100 * done / total:.0f}% " if total else ""
        return f"{head}: {pct}({human_size(done)}/{human_size(total)}), {rate}"
    return f"{head}: {tr['result']} ({human_size(done)}, {rate})"


def qos_text(q: dict[str, Any]) -> str:
    """One line about the QoS limits and how much I/O waited for them."""
    iops, mbps = q.get("max_iops"), q.get("max_mbps")
    if not iops and not mbps:
        return "unlimited"
    limits = [f"{iops} IOPS" if iops else "", f"{mbps:g} MiB/s" if mbps else ""]
    waited = float(q.get("throttled_seconds") or 0)
    return (
        f"at most {' and '.join(x for x in limits if x)};"
        f" {q.get('throttled_ios', 0)} I/Os throttled ({waited:.1f} s)"
    )


def render(status: dict[str, Any]) -> str:
    """The human view: a volume summary table and a replica table."""
    summary = [
        ["volume", status.get("name")],
        ["state", status.get("state")],
        ["degraded", "yes" if status.get("degraded") else "no"],
        ["size", human_size(int(status.get("size") or 0))],
        ["epoch", epoch_text(status.get("epoch"))],
        ["portal", status.get("portal") or "-"],
        ["iqn", status.get("iqn") or "-"],
    ]
    q = status.get("quorum")
    if isinstance(q, dict):
        need = f", {q['needed']} needed" if q.get("needed") else ""
        missing = f", missing {', '.join(q['missing'])}" if q.get("missing") else ""
        summary.append(["quorum", f"{q.get('policy')}: {q.get('voters')} voters{need}{missing}"])
    if status.get("reason"):
        summary.append(["reason", status["reason"]])
    integ = status.get("integrity")
    if isinstance(integ, dict):
        summary.append(
            ["integrity", f"{integ.get('checksum_errors', 0)} checksum errors,"
             f" {integ.get('blocks_repaired', 0)} repaired,"
             f" {integ.get('unrepaired_blocks', 0)} unrepaired"]
        )  # fmt: skip
    tr = status.get("transfer")
    if isinstance(tr, dict):
        summary.append(["transfer", transfer_text(tr)])
    sc = status.get("scrub")
    if isinstance(sc, dict):
        summary.append(["last scrub", scrub_text(sc)])
    sn = status.get("snapshots")
    if isinstance(sn, dict):
        summary.append(["snapshots", f"{sn.get('count')} of at most {sn.get('limit')}"])
    qos = status.get("qos")
    if isinstance(qos, dict):
        summary.append(["qos", qos_text(qos)])
    rows = []
    for r in status.get("replicas", []):
        rb = r.get("rebuild")
        if rb:
            total = rb.get("total") or 0
            pct = 100.0 * rb.get("done", 0) / total if total else 0.0
            progress = f"{pct:.0f}% ({human_size(rb.get('done', 0))}/{human_size(total)})"
            if rb.get("rate"):
                progress += f", {human_size(rb['rate'])}/s"
            if rb.get("eta_seconds") is not None:
                progress += f", ETA {rb['eta_seconds']}s"
        else:
            progress = "-"
        state = {"RW": "healthy", "WO": "rebuilding", "ERR": "failed"}.get(r.get("mode"), "?")
        rows.append(
            [
                r.get("address"),
                r.get("mode"),
                state,
                epoch_text(r.get("epoch")),
                progress,
                r.get("last_error") or "",
            ]
        )
    for w in status.get("witnesses") or []:
        rows.append(
            [w.get("address"), "witness", w.get("state"), epoch_text(w.get("epoch")), "-",
             w.get("last_error") or ""]
        )  # fmt: skip
    headers = ["replica", "mode", "state", "epoch", "rebuild", "last error"]
    return tabulate(summary, tablefmt="plain") + "\n\n" + tabulate(rows, headers=headers)


def run(args: argparse.Namespace) -> int:
    """Print the status; exit 1 with a one-line error when the API cannot be used."""
    try:
        status = fetch_status(args.api, args.timeout)
    except (ApiError, ValueError) as e:
        print(f"jiva status: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render(status))
    return 0
