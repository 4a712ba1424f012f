"""The integrity columns of the health rows (collection module_utils jiva_ha): corrupt block
copies found/repaired, unrepaired blocks (degraded) and the last scrub."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.jiva.storage.plugins.module_utils import jiva_ha as H  # noqa: E402

ADDR = {"h1": "10.0.0.1", "h2": "10.0.0.2"}
VOL = {
    "name": "db",
    "portal": "10.0.0.100:3260",
    "api": "10.0.0.100:9800",
    "replica_nodes": ["h1", "h2"],
    "replica_addresses": ["10.0.0.1:9700", "10.0.0.2:9700"],
}


def doc(unrepaired: int = 0, scrub: dict | None = None, with_integrity: bool = True) -> dict:
    d = {
        "state": "serving",
        "epoch": 5,
        "degraded": False,  # a controller's own flag is checked too; here only the integrity
        "replicas": [
            {"address": "10.0.0.1:9700", "mode": "RW"},
            {"address": "10.0.0.2:9700", "mode": "RW"},
        ],
        "witnesses": [],
    }
    if with_integrity:
        d["integrity"] = {"checksum_errors": 3, "blocks_repaired": 2,
                          "unrepaired_blocks": unrepaired, "unrepaired_offsets": []}  # fmt: skip
        d["scrub"] = scrub or {"running": False, "progress": 1.0, "last_result": "repaired",
                               "last_finished": 1796000000.0}  # fmt: skip
    return d


def test_integrity_columns_and_the_last_scrub():
    row = H.volume_health(VOL, doc(), None, {}, ADDR, "h1")
    assert row["degraded"] is False
    assert row["integrity"]["checksum_errors"] == 3 and row["integrity"]["blocks_repaired"] == 2
    assert H.HEALTH_HEADERS[8:] == ["corrupt found/repaired", "unrepaired", "last scrub"]
    cells = H.health_table_rows([row])[0]
    assert cells[7:] == ["no", "3/2", 0, "repaired 2026-11-30"]


def test_unrepaired_blocks_make_the_volume_degraded():
    row = H.volume_health(VOL, doc(unrepaired=1), None, {}, ADDR, "h1")
    assert row["degraded"] is True and H.health_table_rows([row])[0][9] == 1


def test_running_never_and_an_old_controller():
    running = {"running": True, "progress": 0.42, "last_result": None}
    row = H.volume_health(VOL, doc(scrub=running), None, {}, ADDR, "h1")
    assert H.health_table_rows([row])[0][10] == "running 42%"
    never = {"running": False, "progress": 0.0, "last_result": None}
    row = H.volume_health(VOL, doc(scrub=never), None, {}, ADDR, "h1")
    assert H.health_table_rows([row])[0][10] == "never"
    row = H.volume_health(VOL, doc(with_integrity=False), None, {}, ADDR, "h1")
    assert row["integrity"] is None and H.health_table_rows([row])[0][8:] == ["-", "-", "-"]
    row = H.volume_health(VOL, None, "connection refused", {}, ADDR, "h1")
    assert row["integrity"] is None and row["degraded"] is True
