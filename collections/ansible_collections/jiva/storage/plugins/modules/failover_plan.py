#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: decide what the failover play must do for every jiva volume (and why)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: failover_plan
short_description: Plan the repair of jiva volumes after process or host failures
version_added: "0.1.0"
description:
  - From the placed volumes, the probed hosts, each reachable host's services (M(jiva.storage.node_state))
    and each volume's live status, decides per volume what was found and what to do - restart a
    dead controller on its host, start the controller on another live eligible host when its host
    is unreachable (the portal address moves with it), fence stale controllers and portal
    addresses on hosts that came back, restart dead replicas (they catch up) and dead witnesses,
    and, only when O(relocate_replicas=true), place a replica whose host is unreachable on another
    eligible host (full rebuild).
  - The new controller host is a live eligible host with neither a replica nor the witness of
    the volume when there is one, else the witness's host, else a host with a replica (under the
    majority quorum the new controller serves from the surviving voters).
  - A replica whose host is unreachable is not moved by default - it is tied to its disk. A
    relocation never targets the witness's host (one host would hold two voters of the volume).
  - A witness whose host is unreachable is left alone (the two replicas are a majority); it
    rejoins when its host returns.
  - Pure computation on the control node; it changes nothing.
author:
  - jiva-py contributors (@jiva-py)
options:
  volumes:
    description: The placed volumes (M(jiva.storage.placement) output).
    type: list
    elements: dict
    required: true
  nodes:
    description: The storage hosts - C(name), C(address), C(eligible).
    type: list
    elements: dict
    required: true
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
    description: Where the previous run recorded each volume's controller and replica hosts.
    type: path
  write_state:
    description:
      - Write the new state (RV(state)) to O(state_file) (not in check mode).
      - The task reports C(changed) exactly when the state file's content changes (in check
        mode, when it would change); planning alone changes nothing on any host.
    type: bool
    default: false
  relocate_replicas:
    description: Move replicas of unreachable hosts to other eligible hosts (full rebuild).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Changes nothing in any mode.
  diff_mode:
    support: none
    description: Nothing changes.
"""

EXAMPLES = r"""
- name: Plan
  jiva.storage.failover_plan:
    volumes: "{{ jiva_validated.volumes }}"
    nodes: "{{ jiva_node_list }}"
    node_state: "{{ jiva_node_states }}"
    hosts_down: "{{ jiva_health.hosts_down }}"
    docs: "{{ jiva_health.docs }}"
    state_file: /var/lib/jiva-ha/state.json
  register: jiva_plan
"""

RETURN = r"""
volumes:
  description: The volumes with C(controller), C(replica_nodes), C(replica_addresses), C(witness) and
    C(witness_address) as they should be.
  returned: always
  type: list
  elements: dict
actions:
  description: What to do, as C({host, action, volume, why}); action is start_controller,
    restart_controller, fence_controller, announce_portal, start_replica (with C(replaces) for a
    relocation) or start_witness.
  returned: always
  type: list
  elements: dict
act_on:
  description: Hosts that have something to do.
  returned: always
  type: list
  elements: str
report:
  description: Per volume, what was found and what is done.
  returned: always
  type: list
  elements: dict
report_table:
  description: The report as a text table (volume, controller, found, did).
  returned: always
  type: str
state:
  description: The new state to record (controller, replica and witness hosts per volume).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_failover import (
    ARGUMENT_SPEC,
    PlanError,
    make_plan,
)


def main():
    """Run the module."""
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = make_plan(module.params, module.check_mode)
    except PlanError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
