# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Filter jiva.storage.drained: the hosts drain.yml has drained, from the HA state file."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError
from ansible_collections.jiva.storage.plugins.module_utils.jiva_ha import load_drained


def drained(state_file):
    """The `drained` list of the HA state file at `state_file` ([] when there is no file yet)."""
    try:
        return load_drained(state_file)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc))


class FilterModule(object):
    """jiva.storage state filters."""

    def filters(self):
        """Map filter names to functions."""
        return {"drained": drained}
