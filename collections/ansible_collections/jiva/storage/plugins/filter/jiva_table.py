# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Filter jiva.storage.volume_table: render volumes (placement + live state) as a text table."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

try:
    from tabulate import tabulate
except ImportError:  # pragma: no cover - reported when the filter is used
    tabulate = None

HEADERS = [
    "volume",
    "size",
    "portal",
    "iqn",
    "controller",
    "replicas",
    "witness",
    "state",
    "epoch",
    "degraded",
]


def _replica_cell(vol, state, down=()):
    if not state:
        return ", ".join("%s%s" % (n, ":unreachable" if n in down else "") for n in vol.get("replica_nodes", []))
    by_addr = dict((r.get("address"), r) for r in state.get("replicas", []))
    cells = []
    for node, addr in zip(vol.get("replica_nodes", []), vol.get("replica_addresses", [])):
        r = by_addr.get(addr)
        mode = r.get("mode", "?") if r else "missing"
        if node in down and mode != "RW":
            mode = "unreachable"
        if r and r.get("rebuild"):
            done, total = r["rebuild"].get("done", 0), r["rebuild"].get("total", 0) or 1
            mode += " %d%%" % (100 * done // total)
        cells.append("%s:%s" % (node, mode))
    return ", ".join(cells)


def _witness_cell(vol, state, down=()):
    """`host:STATE` of the placed witness (`host` without live state, `-` without a witness)."""
    host = vol.get("witness")
    if not host:
        return "-"
    if not state:
        return host + (":unreachable" if host in down else "")
    found = [w for w in state.get("witnesses") or [] if w.get("address") == vol.get("witness_address")]
    wstate = found[0].get("state", "?") if found else "missing"
    if host in down and wstate != "ok":
        wstate = "unreachable"
    return "%s:%s" % (host, wstate)


def volume_table(volumes, states=None, tablefmt="simple", hosts_down=None):
    """Return the volumes with their controller, replicas, witness and live state as a tabulate
    table; hosts in `hosts_down` (not reached in this run) are marked unreachable."""
    if tabulate is None:
        raise AnsibleFilterError(
            "jiva.storage.volume_table needs the Python package 'tabulate' on the control node"
        )
    states = states or {}
    down = set(hosts_down or ())
    rows = []
    for vol in volumes:
        st = states.get(vol["name"]) or {}
        ctl_down = vol.get("controller") in down
        rows.append(
            [
                vol["name"],
                vol.get("size"),
                vol.get("portal"),
                vol.get("iqn"),
                "%s%s" % (vol.get("controller"), " (unreachable)" if ctl_down else ""),
                _replica_cell(vol, st, down),
                _witness_cell(vol, st, down),
                st.get("state", "controller host down" if ctl_down else "unknown"),
                st.get("epoch", ""),
                st.get("degraded", ""),
            ]
        )
    return tabulate(rows, headers=HEADERS, tablefmt=tablefmt)


class FilterModule(object):
    """jiva.storage filters."""

    def filters(self):
        """Map filter names to functions."""
        return {"volume_table": volume_table}
