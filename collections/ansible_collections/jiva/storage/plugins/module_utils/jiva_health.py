# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The health check behind jiva.storage.volume_health (module and action plugin alike): read
every volume's API, probe the hosts, build the rows, the table and the JSON report."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
from functools import partial

from ansible_collections.jiva.storage.plugins.module_utils.jiva_api import API_CLIENT_ARGS
from ansible_collections.jiva.storage.plugins.module_utils.jiva_ha import (
    HEALTH_HEADERS,
    health_table_rows,
    load_state_doc,
    parallel,
    probe_hosts,
    read_volume,
    volume_health,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_placement import PlacementError, place

try:
    from tabulate import tabulate
except ImportError:  # pragma: no cover - plain fallback below
    tabulate = None


def render(rows):
    """Text table of the rows (tabulate when available)."""
    table = health_table_rows(rows)
    if tabulate is not None:
        return tabulate(table, headers=HEALTH_HEADERS)
    return "\n".join(" | ".join(str(c) for c in r) for r in [HEALTH_HEADERS] + table)


ARGUMENT_SPEC = dict(
    volumes=dict(type="list", elements="raw", required=True),
    place=dict(type="bool", default=False),
    replica_port_base=dict(type="int", default=9700),
    api_port_base=dict(type="int", default=9800),
    nodes=dict(type="list", elements="dict", required=True),
    state_file=dict(type="path"),
    token=dict(type="str", no_log=True),
    timeout=dict(type="float", default=2.0),
    probe_hosts=dict(type="bool", default=True),
    json_file=dict(type="path"),
    fail_on_degraded=dict(type="bool", default=False),
)
ARGUMENT_SPEC.update(API_CLIENT_ARGS)


class HealthError(Exception):
    """The module fails: message, and the result to return with it."""

    def __init__(self, msg, result=None):
        Exception.__init__(self, msg)
        self.result = result or {}


def health(p):
    """The module's result for validated params `p` (raises HealthError to fail).

    Shared by the module and the action plugin of the same name, which runs it inside
    ansible-playbook on the control node (no module start-up on the failover's critical path).
    """
    volumes = p["volumes"]
    try:
        doc = load_state_doc(p["state_file"])
    except ValueError:
        doc = {}  # health only reads: an unreadable state file is no reason to fail
    saved = doc.get("volumes") or {}
    if p["place"]:
        nodes = [dict(name=n["name"], address=n["address"], eligible=n.get("eligible", True)) for n in p["nodes"]]
        try:
            # the ports site.yml recorded (volumes with state: absent are not placed)
            volumes = place(nodes, volumes, None, p["replica_port_base"], p["api_port_base"],
                            recorded_ports=doc.get("ports") or {})
        except PlacementError as exc:
            raise HealthError("invalid jiva inventory: %s" % exc)
        for vol in volumes:
            vol.pop("chap_secret", None)
            vol.pop("want_witness", None)
    node_address = dict((n["name"], n["address"]) for n in p["nodes"])
    # The host probes and the API reads run side by side: a dead host costs one probe round
    # (with its retry) instead of that plus an API timeout after it.
    calls = [partial(read_volume, v["api"], p["token"], p["timeout"], p["api_ca"]) for v in volumes]  # type: list
    if p["probe_hosts"]:
        calls.append(partial(probe_hosts, p["nodes"], timeout=min(p["timeout"], 0.8)))
    results = parallel(calls)
    reads = results[: len(volumes)]
    down = {}
    if p["probe_hosts"]:
        down = dict((h, why) for h, why in results[-1].items() if why is not None)
    rows, docs = [], {}
    for vol, (doc, err) in zip(volumes, reads):
        docs[vol["name"]] = doc
        known = saved.get(vol["name"]) or {}
        ctl = known.get("controller") or vol.get("controller")
        if known.get("replicas") and vol.get("replica_port") is not None:
            vol = dict(vol, replica_nodes=known["replicas"],
                       replica_addresses=["%s:%s" % (node_address.get(h, h), vol["replica_port"])
                                          for h in known["replicas"]])
        if "witness" in known and vol.get("replica_port") is not None:
            w = known["witness"]
            vol = dict(vol, witness=w,
                       witness_address="%s:%s" % (node_address.get(w, w), vol["replica_port"]) if w else None)
        rows.append(volume_health(vol, doc, err, down, node_address, ctl))
    degraded = [r["volume"] for r in rows if r["degraded"] or r["state"] != "serving"]
    if p["json_file"]:
        with open(p["json_file"], "w") as f:
            json.dump({"volumes": rows, "hosts_down": down, "degraded": degraded}, f, indent=2, sort_keys=True)
            f.write("\n")
    table = render(rows)
    result = dict(changed=False, placed=volumes, nodes=p["nodes"], volumes=rows, table=table, degraded=degraded, hosts_down=down, docs=docs)
    if p["fail_on_degraded"] and degraded:
        raise HealthError("degraded volumes: %s\n%s" % (", ".join(degraded), table), result)
    return result
