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
    witness's host and state (C(ok), C(unreachable), C(missing), C(unknown)), the quorum, the
    integrity findings (corrupt block copies found and repaired, blocks left unrepaired, the last
    scrub) and a degraded flag - as data, as a text table (tabulate) and optionally as a JSON file.
  - A volume is degraded when a replica is not C(RW), its witness is not C(ok), its state is
    C(no quorum), a block has no good copy left (unrepaired corruption), or its API does not
    answer.
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
extends_documentation_fragment:
  - jiva.storage.api_client
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
      integrity:
        checksum_errors: 2
        blocks_repaired: 2
        unrepaired_blocks: 0
        scrub_running: false
        scrub_progress: 1.0
        last_scrub_result: repaired
        last_scrub_finished: 1796000000.0
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_health import (
    ARGUMENT_SPEC,
    HealthError,
    health,
)


def main():
    """Run the module."""
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = health(module.params)
    except HealthError as exc:
        module.fail_json(msg=str(exc), **exc.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
