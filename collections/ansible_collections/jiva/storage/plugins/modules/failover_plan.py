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
    description: Write the new state (RV(state)) to O(state_file) (not in check mode).
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

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_ha import plan

try:
    from tabulate import tabulate
except ImportError:  # pragma: no cover - plain fallback
    tabulate = None


ARGUMENT_SPEC = dict(
    volumes=dict(type="list", elements="dict", required=True),
    nodes=dict(type="list", elements="dict", required=True),
    node_state=dict(type="dict", default={}),
    hosts_down=dict(type="dict", default={}),
    docs=dict(type="dict", default={}),
    state_file=dict(type="path"),
    relocate_replicas=dict(type="bool", default=False),
    write_state=dict(type="bool", default=False),
)


class PlanError(Exception):
    """The plan cannot be made (the message says why)."""


def make_plan(p, check_mode):
    """The module's result (without `changed`) for validated params `p`; writes the state file.

    Shared by the module and the action plugin of the same name, which runs it inside
    ansible-playbook on the control node (no module start-up on the failover's critical path).
    """
    saved = {}
    if p["state_file"] and os.path.exists(p["state_file"]):
        try:
            with open(p["state_file"]) as f:
                saved = json.load(f).get("volumes", {})
        except (IOError, OSError, ValueError) as exc:
            raise PlanError("cannot read the failover state file %s: %s" % (p["state_file"], exc))
    result = plan(p["volumes"], p["nodes"], p["node_state"], p["hosts_down"], p["docs"], saved,
                  relocate=p["relocate_replicas"])
    if p["write_state"] and p["state_file"] and not check_mode:
        directory = os.path.dirname(p["state_file"])
        if directory and not os.path.isdir(directory):
            os.makedirs(directory)
        tmp = p["state_file"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"volumes": result["state"]}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.rename(tmp, p["state_file"])
    rows = [[r["volume"], r["controller"], "; ".join(r["found"]), "; ".join(r["did"])] for r in result["report"]]
    if tabulate is not None:
        result["report_table"] = tabulate(rows, headers=["volume", "controller", "found", "did"])
    else:  # pragma: no cover
        result["report_table"] = "\n".join(" | ".join(str(c) for c in r) for r in rows)
    return result


def main():
    """Run the module."""
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = make_plan(module.params, module.check_mode)
    except PlanError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
