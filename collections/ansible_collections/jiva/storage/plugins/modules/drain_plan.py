#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: plan the evacuation of a jiva storage host (drain.yml) and mark it drained."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: drain_plan
short_description: Plan moving every replica, witness and controller off a jiva host
version_added: "0.3.0"
description:
  - For every volume with a replica, the witness or the controller on O(host), decides where each
    goes (placement with O(host) and every drained host ineligible, existing replicas kept), in
    which order (new witnesses and replicas started, controllers moved or restarted, new replicas
    added and rebuilt, the old ones removed), and returns the plan for C(playbooks/drain.yml).
  - Refuses, before anything is touched, an unknown host, a drain that leaves a volume fewer
    eligible hosts than replicas, a volume pinned to O(host), a volume degraded other than on
    O(host), and a volume whose only host for a new replica holds its witness.
  - Records O(host) in the C(drained) list of O(state_file) (the HA state file); every play that
    places volumes treats the hosts listed there as ineligible. O(undrain=true) takes O(host) off
    that list instead (nothing moves back).
  - Changes no storage host; the task reports changed when the drained list changes.
author:
  - jiva-py contributors (@jiva-py)
options:
  host:
    description: The inventory host to drain (or to undrain).
    type: str
    required: true
  undrain:
    description: Take O(host) off the drained list (it is eligible again) instead of draining it.
    type: bool
    default: false
  volumes:
    description: The raw C(jiva_volumes).
    type: list
    elements: raw
  nodes:
    description: The storage hosts - C(name), C(address), C(eligible).
    type: list
    elements: dict
    required: true
  replica_port_base:
    description: The replica port base.
    type: int
    default: 9700
  api_port_base:
    description: The API port base.
    type: int
    default: 9800
  node_state:
    description: M(jiva.storage.node_state) results by host, for the reachable hosts.
    type: dict
    default: {}
  hosts_down:
    description: Unreachable hosts with the reason (the C(hosts_down) result of M(jiva.storage.volume_health)).
    type: dict
    default: {}
  docs:
    description: Status documents by volume (the C(docs) result of M(jiva.storage.volume_health)).
    type: dict
    default: {}
  state_file:
    description: The HA state file (where each volume runs, and the C(drained) list).
    type: path
    required: true
attributes:
  check_mode:
    support: full
    description: In check mode the drained list is not written.
  diff_mode:
    support: none
    description: No diff.
"""

EXAMPLES = r"""
- name: Plan the drain of node3
  jiva.storage.drain_plan:
    host: node3
    volumes: "{{ jiva_volumes }}"
    nodes: "{{ jiva_before.nodes }}"
    node_state: "{{ jiva_node_states }}"
    hosts_down: "{{ jiva_before.hosts_down }}"
    docs: "{{ jiva_before.docs }}"
    state_file: .ansible/jiva-ha-state.json
  register: jiva_drain
"""

RETURN = r"""
volumes:
  description: The affected volumes - C(interim) and C(final) placements, C(controller_from),
    C(controller_to), C(move_controller), C(restart_controller), C(new_replicas),
    C(removed_replicas), C(witness_from), C(witness_to), C(moves).
  returned: always
  type: list
  elements: dict
final:
  description: Every volume's placement once the drain is done.
  returned: always
  type: list
  elements: dict
actions:
  description: C({host, action, volume}); action is start_replica, start_witness, start_controller,
    stop_controller or write_controller.
  returned: always
  type: list
  elements: dict
act_on:
  description: Hosts with an action.
  returned: always
  type: list
  elements: str
node_live:
  description: Whether O(host) is reachable (its services are stopped at the end).
  returned: always
  type: bool
drained:
  description: The drained hosts after this run.
  returned: always
  type: list
  elements: str
report_table:
  description: What moves, as a text table.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_drain import (
    ARGUMENT_SPEC,
    DrainRefused,
    make_drain,
)


def main():
    """Run the module."""
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = make_drain(module.params, module.check_mode)
    except DrainRefused as exc:
        module.fail_json(msg="drain refused, nothing was changed: %s" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
