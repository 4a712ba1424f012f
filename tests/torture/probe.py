"""The stale-controller probe of the torture run: try one write and one read through an old
controller that a newer one has replaced, and say what happened (JSON on stdout).

The torture run starts it inside the old controller's test host (`ip netns exec HOST python -m
tests.torture.probe ...`), so it reaches that controller even while its host is
partitioned from everything else. A superseded controller must never acknowledge the write, and
a read it serves must not be older than what the new controller acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.request

from jiva_engine.initiator import Initiator, IscsiError
from tests.torture.workload import BLOCK, make_block, parse_block

SECTORS = BLOCK // 512


def _api_state(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return str(json.load(r).get("state"))
    except (OSError, ValueError) as e:
        return f"unreachable ({type(e).__name__})"


async def probe(
    portal: str, iqn: str, api: str, write_lba: int, seq: int, read_lba: int | None, timeout: float
) -> dict:
    """Log in, clear unit attentions (TEST UNIT READY), then one WRITE and one READ side by side."""
    loop = asyncio.get_running_loop()
    url = f"http://{api}/v1/volume"
    out: dict = {"state_before": await loop.run_in_executor(None, _api_state, url)}
    host, port = portal.rsplit(":", 1)
    init = Initiator(host, int(port), iqn, timeout=timeout)
    try:
        try:
            await init.connect()
        except (TimeoutError, OSError, IscsiError, asyncio.IncompleteReadError) as e:
            out["login"] = f"failed: {type(e).__name__}: {e}"
            return out
        out["login"] = "ok"
        for _ in range(3):  # a new session's first commands may report a unit attention
            try:
                await init.command(bytes(6))
                out["tur"] = "ready"
                break
            except IscsiError as e:
                out["tur"] = f"{type(e).__name__}: {e}"
                if not init.connected:
                    break

        async def write() -> str:
            try:
                await init.write(write_lba * SECTORS, make_block(write_lba, seq))
            except (TimeoutError, OSError, IscsiError) as e:
                return f"failed: {type(e).__name__}: {e}"
            return "acked"

        async def read() -> dict | str | None:
            if read_lba is None:
                return None
            try:
                data = await init.read(read_lba * SECTORS, SECTORS)
            except (TimeoutError, OSError, IscsiError) as e:
                return f"failed: {type(e).__name__}: {e}"
            kind, lba, got = parse_block(data)
            return {"kind": kind, "lba": lba, "seq": got}

        if init.connected:
            out["write"], out["read"] = await asyncio.gather(write(), read())
    finally:
        await init.close()
    out["state_after"] = await loop.run_in_executor(None, _api_state, url)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--portal", required=True, metavar="HOST:PORT")
    p.add_argument("--iqn", required=True)
    p.add_argument("--api", required=True, metavar="HOST:PORT")
    p.add_argument("--write-lba", type=int, required=True, help="4 KiB block to try to write")
    p.add_argument("--seq", type=int, required=True, help="sequence number the block carries")
    p.add_argument("--read-lba", type=int, help="4 KiB block to read back")
    p.add_argument("--timeout", type=float, default=2.5, help="seconds per command")
    a = p.parse_args(argv)
    res = asyncio.run(probe(a.portal, a.iqn, a.api, a.write_lba, a.seq, a.read_lba, a.timeout))
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
