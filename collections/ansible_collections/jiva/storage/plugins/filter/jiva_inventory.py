# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Filter jiva.storage.inventory_problems: what is wrong with the storage hosts, taken together."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.jiva.storage.plugins.module_utils.jiva_inventory import inventory_problems


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
            }
        )
    return inventory_problems(hosts)


class FilterModule(object):
    """jiva.storage inventory filters."""

    def filters(self):
        """Map filter names to functions."""
        return {"inventory_problems": _problems}
