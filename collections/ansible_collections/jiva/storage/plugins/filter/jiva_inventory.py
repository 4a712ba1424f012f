# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Filters jiva.storage.inventory_problems (what is wrong with the storage hosts, taken together)
and jiva.storage.metrics_port (where a replica or witness serves its metrics)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError
from ansible_collections.jiva.storage.plugins.module_utils.jiva_inventory import (
    CONTROLLER_OPTIONS,
    inventory_problems,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_placement import (
    PlacementError,
    metrics_port,
)


def _problems(names, hostvars):
    hosts = []
    for name in names:
        hv = hostvars[name]
        hosts.append(
            {
                "name": name,
                "address": hv.get("jiva_address"),
                "ansible_host": hv.get("ansible_host"),
                "volumes_set": "jiva_volumes" in hv,
                "volumes": hv.get("jiva_volumes"),
                # the controller tuning variables (jiva_slow_replica_factor, ...) set for it
                "controller_options": {o: hv.get("jiva_" + o) for o in CONTROLLER_OPTIONS},
            }
        )
    return inventory_problems(hosts)


def _metrics_port(replica_port, metrics_port_base=9900, replica_port_base=9700):
    try:
        return metrics_port(replica_port, int(metrics_port_base or 0), int(replica_port_base))
    except (PlacementError, ValueError, TypeError) as exc:
        raise AnsibleFilterError("jiva.storage.metrics_port: %s" % exc)


class FilterModule(object):
    """jiva.storage inventory filters."""

    def filters(self):
        """Map filter names to functions."""
        return {"inventory_problems": _problems, "metrics_port": _metrics_port}
