#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: the live health of every jiva volume from its management API, as rows, a table and JSON."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: volume_health
short_description: Live health of jiva volumes (controller, replicas, rebuild progress, degraded)
version_added: "0.1.0"
description:
  - For every volume, reads C(GET /v1/volume) from its controller's management API and probes the
    storage hosts (a TCP connect to their SSH port), then returns one row per volume - the
    controller host and portal, state (C(serving), C(waiting), C(fenced), C(no quorum)), epoch,
    each replica's host and mode (C(RW), C(WO), C(ERR), C(unreachable)), rebuild progress, the
    witness's host and state (C(ok), C(unreachable), C(missing), C(unknown)), the quorum and a
    degraded flag - as data, as a text table (tabulate) and optionally as a JSON file.
  - A volume is degraded when a replica is not C(RW), its witness is not C(ok), its state is
    C(no quorum), or its API does not answer.
  - Runs on the control node with the Python standard library (plus tabulate for the table).
  - Fails only when O(fail_on_degraded=true) and a volume is degraded or not serving.
author:
  - jiva-py contributors (@jiva-py)
options:
  volumes:
    description:
      - The placed volumes (the C(volumes) result of M(jiva.storage.placement)), or the raw
        C(jiva_volumes) list when O(place=true).
    type: list
    elements: raw
    required: true
  place:
    description:
      - Validate and place the raw C(jiva_volumes) here (same rules as M(jiva.storage.placement)),
        saving a separate task. The placed volumes are returned as RV(placed).
    type: bool
    default: false
  replica_port_base:
    description: With O(place=true), the replica port base.
    type: int
    default: 9700
  api_port_base:
    description: With O(place=true), the API port base.
    type: int
    default: 9800
  nodes:
    description: The storage hosts - C(name), C(address), and C(ssh_host)/C(ssh_port) for the probe.
    type: list
    elements: dict
    required: true
  state_file:
    description: The failover state file (where each controller runs now); optional.
    type: path
  token:
    description: Bearer token of the management API.
    type: str
  timeout:
    description: Seconds to wait for each API answer and each host probe.
    type: float
    default: 2.0
  probe_hosts:
    description: Probe the hosts' SSH ports to mark replicas on dead hosts C(unreachable).
    type: bool
    default: true
  json_file:
    description: Write the rows as JSON to this file on the control node.
    type: path
  fail_on_degraded:
    description: Fail when any volume is degraded or not serving.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads only (the JSON file is written in check mode too, it is a report).
  diff_mode:
    support: none
    description: Nothing changes.
"""

EXAMPLES = r"""
- name: Health of every volume
  jiva.storage.volume_health:
    volumes: "{{ jiva_validated.volumes }}"
    nodes: "{{ jiva_node_list }}"
    json_file: /tmp/jiva-health.json
  register: jiva_health
"""

RETURN = r"""
volumes:
  description: One row per volume.
  returned: always
  type: list
  elements: dict
  sample:
    - volume: db
      controller_host: node2
      controller_host_reachable: true
      portal: "10.0.0.100:3260"
      api: "10.0.0.100:9800"
      state: serving
      reason: ""
      epoch: 17179869188
      term: 4
      view: 4
      quorum: {policy: majority, voters: 3, needed: 2, missing: []}
      degraded: true
      replicas:
        - {host: node1, address: "10.0.0.1:9700", mode: RW, rebuild_percent: null}
        - {host: node3, address: "10.0.0.3:9700", mode: WO, rebuild_percent: 42}
      witnesses:
        - {host: node2, address: "10.0.0.2:9700", state: ok, epoch: 17179869188, last_error: null}
table:
  description: The rows as a text table.
  returned: always
  type: str
degraded:
  description: Names of the volumes that are degraded or not serving.
  returned: always
  type: list
  elements: str
hosts_down:
  description: Hosts whose SSH port did not answer, with the reason.
  returned: always
  type: dict
nodes:
  description: The O(nodes) given (for the next module).
  returned: always
  type: list
  elements: dict
placed:
  description: The placed volumes (with O(place=true); else the input).
  returned: always
  type: list
  elements: dict
docs:
  description: The raw status documents by volume (null when the API did not answer).
  returned: always
  type: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_ha import (
    HEALTH_HEADERS,
    health_table_rows,
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


def load_state(path):
    """The failover state file as a dict ({} when missing or unreadable)."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f).get("volumes", {})
    except (IOError, OSError, ValueError):
        return {}


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


class HealthError(Exception):
    """The module fails: message, and the result to return with it."""

    def __init__(self, msg, result=None):
        Exception.__init__(self, msg)
        self.result = result or {}


def main():
    """Run the module."""
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = health(module.params)
    except HealthError as exc:
        module.fail_json(msg=str(exc), **exc.result)
    module.exit_json(**result)


def health(p):
    """The module's result for validated params `p` (raises HealthError to fail).

    Shared by the module and the action plugin of the same name, which runs it inside
    ansible-playbook on the control node (no module start-up on the failover's critical path).
    """
    volumes = p["volumes"]
    if p["place"]:
        nodes = [dict(name=n["name"], address=n["address"], eligible=n.get("eligible", True)) for n in p["nodes"]]
        try:
            volumes = place(nodes, volumes, None, p["replica_port_base"], p["api_port_base"])
        except PlacementError as exc:
            raise HealthError("invalid jiva inventory: %s" % exc)
        for vol in volumes:
            vol.pop("chap_secret", None)
            vol.pop("want_witness", None)
    saved = load_state(p["state_file"])
    node_address = dict((n["name"], n["address"]) for n in p["nodes"])
    # The host probes and the API reads run side by side: a dead host costs one probe round
    # (with its retry) instead of that plus an API timeout after it.
    calls = [(lambda v=vol: read_volume(v["api"], p["token"], p["timeout"])) for vol in volumes]
    if p["probe_hosts"]:
        calls.append(lambda: probe_hosts(p["nodes"], timeout=min(p["timeout"], 0.8)))
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


if __name__ == "__main__":
    main()
