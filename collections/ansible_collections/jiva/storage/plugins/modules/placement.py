#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: validate jiva volumes and nodes and place each volume's replicas and controller."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: placement
short_description: Validate the jiva inventory and place replicas, controllers and witnesses on nodes
version_added: "0.1.0"
description:
  - Checks the volumes and nodes of a jiva inventory and computes, for every volume, the node
    that runs its controller, the nodes that hold its replicas and, for a volume with 2 replicas,
    the node that runs its witness.
  - Replicas are placed with rendezvous (highest random weight) hashing of the volume name and
    the node name, so the result does not depend on the order of the inventory and re-runs give
    the same answer.
  - Never places two replicas of one volume on one node. Honours pinned nodes (O(nodes) of a
    volume) and nodes marked ineligible. Replicas listed in O(existing) stay where they are, so
    adding nodes never moves an existing replica.
  - The controller stays where it runs, else goes to the pinned host (C(controller), which may
    also hold a replica of the volume), else to the replica node with the highest controller
    weight.
  - A volume with exactly 2 replicas and C(quorum=majority) gets a witness (a metadata-only third
    voter, so that the volume keeps a majority when one host is lost) on an eligible node that
    holds no replica of the volume, when one exists. An existing witness (O(existing)) stays
    where it is; otherwise the node with the highest witness weight (its own salt), preferring
    nodes that are not giving up a replica of the volume and nodes other than the controller's.
    C(witness=false) on the volume opts out; C(witness=true) fails when no such node exists.
    The witness listens on the node's address and the volume's replica port.
  - Warns about a 2-replica volume left without a witness under C(quorum=majority) (it holds its
    I/O while either replica's host is down).
  - Fails before anything is changed, with a message naming the volume and the variable, when the
    inventory is invalid, a volume asks for more replicas than there are eligible nodes, or a
    volume asks for a witness (C(witness=true)) that no eligible node can hold.
  - Ports - a volume keeps the ports it was given once - C(replica_port)/C(api_port) from the
    inventory win; else what its running services use (O(node_state)); else what O(state_file)
    recorded; else a new port - the base plus the volume's index when that port is free (what
    clusters deployed before ports were recorded use), else the lowest free port from the base.
    Removing or reordering volumes moves no port.
  - Volumes with C(state=absent) are not placed; they are returned in RV(removed) (with their
    C(delete_data) flag) for the playbook to stop and unconfigure everywhere.
  - Volumes that run on a host (O(node_state), O(existing_services)) but are not in O(volumes) at
    all are refused with O(unlisted=refuse), removed (data kept) with O(unlisted=remove).
  - Hosts in O(hosts_down) are unreachable this run - what they run is taken from the layout
    O(state_file) recorded, and nothing moves off them.
  - Pure computation on the control node; it changes nothing on the hosts. With
    O(write_state=true) it records the ports and the layout in O(state_file) (not in check mode).
author:
  - jiva-py contributors (@jiva-py)
options:
  nodes:
    description:
      - The storage nodes, usually built from the C(jiva_nodes) group.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Inventory host name.
        type: str
        required: true
      address:
        description: Address the node's replicas listen on (C(jiva_address)).
        type: str
        required: true
      eligible:
        description: Whether new replicas and controllers may be placed on the node (C(jiva_eligible)).
        type: bool
        default: true
  volumes:
    description:
      - The C(jiva_volumes) list. Each item has C(name), C(size), C(replicas) (default 3),
        C(portal) (HOST:PORT or HOST, port 3260 by default), and optionally C(chap)
        (C(user), C(secret)), C(allowed_initiators), C(nodes) (pinned hosts), C(controller)
        (pinned controller host), C(replica_port), C(api_port), C(witness) (true, false, or
        unset = a witness when possible), C(quorum) (C(majority), the default, or C(off)) and
        C(qos) (C(max_iops), a positive integer, and/or C(max_mbps), a positive number of MiB/s;
        returned as C(max_iops)/C(max_mbps) per volume, null when unlimited).
    type: list
    elements: raw
  existing:
    description:
      - Where replicas, controllers and witnesses already run, as a mapping of volume name to a
        mapping with C(replicas) (a list of hosts), C(controller) (a host) and C(witness) (a host).
        Those placements are kept (as long as the hosts stay eligible).
    type: dict
    default: {}
  existing_services:
    description:
      - Another way to give O(existing) - for every host, the names of the service files found in
        its config folder (C(replica-VOLUME.env), C(controller-VOLUME.env), C(witness-VOLUME.env)),
        as site.yml collects them.
    type: dict
    default: {}
  node_state:
    description:
      - M(jiva.storage.node_state) results by host, for the reachable hosts - the services they
        run (like O(existing_services)) and the ports in their env files (C(ports)).
    type: dict
    default: {}
  hosts_down:
    description:
      - Hosts that could not be reached this run; their services are unknown.
    type: list
    elements: str
    default: []
  state_file:
    description:
      - The HA state file on the control node - C(ports) (recorded ports) and C(volumes) (the
        layout, used for O(hosts_down)).
    type: path
  write_state:
    description:
      - Record the ports and the layout in O(state_file), keeping its other keys (not in check
        mode). The task reports no change either way - it changes nothing on a host.
    type: bool
    default: false
  unlisted:
    description:
      - What to do about volumes that run but are not in O(volumes) - C(ignore), C(refuse)
        (fail, naming them), C(remove) (return them in RV(removed), data kept).
    type: str
    choices: [ignore, refuse, remove]
    default: ignore
  replica_port_base:
    description:
      - A new volume without C(replica_port) listens on this port plus its index in
        C(jiva_volumes) when that port is free, else on the lowest free port from here.
    type: int
    default: 9700
  api_port_base:
    description:
      - A new volume without C(api_port) serves its management API on this port plus its index
        when free, else on the lowest free port from here.
    type: int
    default: 9800
  metrics_port_base:
    description:
      - Replicas and witnesses serve Prometheus metrics on their volume's O(replica_port_base)-relative
        port moved here - C(metrics_port = metrics_port_base + replica_port - replica_port_base)
        (9700 + i -> 9900 + i), as stable as the replica port. Each volume gets C(metrics_port),
        C(replica_metrics) and C(witness_metrics); a clash with another port fails.
      - C(0) (the default) - no metrics ports.
    type: int
    default: 0
    version_added: "0.5.0"
attributes:
  check_mode:
    support: full
    description: Changes nothing in any mode, so it runs in check mode as usual.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to diff.
notes:
  - Ports are stable once recorded; keep O(state_file) with the inventory (the running services'
    env files are the authority when it is lost).
"""

EXAMPLES = r"""
- name: Place the volumes
  jiva.storage.placement:
    nodes:
      - {name: node1, address: 10.0.0.1}
      - {name: node2, address: 10.0.0.2}
      - {name: node3, address: 10.0.0.3}
      - {name: node4, address: 10.0.0.4, eligible: false}
    volumes:
      - {name: db, size: 10G, replicas: 2, portal: "10.0.0.100:3260"}
      - {name: logs, size: 1G, replicas: 2, portal: "10.0.0.101:3260", witness: false}
  register: placed

- name: Show where db's replicas and its witness go
  ansible.builtin.debug:
    msg: "{{ placed.volumes[0].replica_nodes }} + witness {{ placed.volumes[0].witness }}"
"""

RETURN = r"""
volumes:
  description: The volumes, normalised, with their placement.
  returned: success
  type: list
  elements: dict
  sample:
    - name: db
      size: 10G
      size_bytes: 10737418240
      replicas: 2
      portal: "10.0.0.100:3260"
      portal_host: 10.0.0.100
      portal_port: 3260
      api: "10.0.0.100:9800"
      api_port: 9800
      replica_port: 9700
      replica_nodes: [node2, node1]
      replica_addresses: ["10.0.0.2:9700", "10.0.0.1:9700"]
      controller: node2
      witness: node3
      witness_address: "10.0.0.3:9700"
      metrics_port: 9900
      replica_metrics: ["10.0.0.2:9900", "10.0.0.1:9900"]
      witness_metrics: "10.0.0.3:9900"
      quorum: majority
      iqn: "iqn.2026-11.org.jiva-py:db"
      moved: []
removed:
  description: Volumes to stop and unconfigure on every host - C(state=absent) entries and, with
    O(unlisted=remove), volumes that are not listed.
  returned: success
  type: list
  elements: dict
  sample:
    - {name: old, index: 2, listed: true, portal_host: 10.0.0.102, replica_port: 9702,
       api_port: 9802, delete_data: false}
ports:
  description: The port record (C(replica_port), C(api_port), and C(state=absent) for volumes
    being removed) by volume.
  returned: success
  type: dict
hosts_down:
  description: O(hosts_down).
  returned: success
  type: list
  elements: str
by_node:
  description: For every node, the volumes whose replicas, controllers and witnesses it runs.
  returned: success
  type: dict
  sample:
    node1: {replicas: [db], controllers: [], witnesses: []}
    node2: {replicas: [db], controllers: [db], witnesses: []}
    node3: {replicas: [], controllers: [], witnesses: [db]}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_ha import (
    load_state_doc,
    save_state_doc,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_placement import (
    PlacementError,
    layout_record,
    parse_existing_services,
    placement_warnings,
    plan_volumes,
    running_ports,
)


def services_of(node_state):
    """{host: [KIND-VOLUME.env]} from node_state results (the form of existing_services)."""
    out = {}
    for host, st in (node_state or {}).items():
        if not isinstance(st, dict):
            continue
        names = []
        for kind, key in (("replica", "replicas"), ("controller", "controllers"), ("witness", "witnesses")):
            names += ["%s-%s.env" % (kind, v) for v in st.get(key) or []]
        out[host] = names
    return out


def main():
    """Run the module: validate, place, return the placement (never changes anything)."""
    module = AnsibleModule(
        argument_spec=dict(
            nodes=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    name=dict(type="str", required=True),
                    address=dict(type="str", required=True),
                    eligible=dict(type="bool", default=True),
                ),
            ),
            volumes=dict(type="list", elements="raw"),
            existing=dict(type="dict", default={}),
            existing_services=dict(type="dict", default={}),
            node_state=dict(type="dict", default={}),
            hosts_down=dict(type="list", elements="str", default=[]),
            state_file=dict(type="path"),
            write_state=dict(type="bool", default=False),
            unlisted=dict(type="str", default="ignore", choices=["ignore", "refuse", "remove"]),
            replica_port_base=dict(type="int", default=9700),
            api_port_base=dict(type="int", default=9800),
            metrics_port_base=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        doc = load_state_doc(p["state_file"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    recorded = doc.get("ports") or {}
    services = dict(p["existing_services"])
    services.update(services_of(p["node_state"]))
    existing = parse_existing_services(services, p["existing"])
    running = running_ports(
        dict((h, st.get("ports")) for h, st in p["node_state"].items() if isinstance(st, dict)),
        recorded,
    )
    try:
        result = plan_volumes(
            p["nodes"], p["volumes"], existing, p["replica_port_base"], p["api_port_base"],
            recorded_ports=recorded, running=running, down=p["hosts_down"],
            layout=doc.get("volumes") or {}, unlisted=p["unlisted"],
            metrics_port_base=p["metrics_port_base"],
        )
    except PlacementError as exc:
        module.fail_json(msg="invalid jiva inventory: %s" % exc)
    volumes = result["volumes"]
    by_node = dict(
        (n["name"], {"replicas": [], "controllers": [], "witnesses": []}) for n in p["nodes"]
    )
    for vol in volumes:
        for n in vol["replica_nodes"]:
            by_node[n]["replicas"].append(vol["name"])
        by_node[vol["controller"]]["controllers"].append(vol["name"])
        if vol["witness"]:
            by_node[vol["witness"]]["witnesses"].append(vol["name"])
    for msg in placement_warnings(volumes):
        module.warn(msg)
    if p["write_state"] and p["state_file"] and not module.check_mode:
        save_state_doc(p["state_file"], {"ports": result["ports"], "volumes": layout_record(volumes)})
    for vol in volumes:
        vol.pop("chap_secret", None)
        vol.pop("want_witness", None)
    module.exit_json(changed=False, volumes=volumes, by_node=by_node, removed=result["removed"],
                     ports=result["ports"], hosts_down=p["hosts_down"])


if __name__ == "__main__":
    main()
