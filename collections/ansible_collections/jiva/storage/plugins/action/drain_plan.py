# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Action plugin for jiva.storage.drain_plan: plan inside ansible-playbook (no module start-up)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleActionFail
from ansible_collections.jiva.storage.plugins.module_utils import jiva_drain as mod
from ansible_collections.jiva.storage.plugins.plugin_utils.jiva_inprocess import InProcessAction


class ActionModule(InProcessAction):
    """Runs drain_plan.make_drain in process on the control node."""

    MODULE = "jiva.storage.drain_plan"
    ARGUMENT_SPEC = mod.ARGUMENT_SPEC

    def core(self, params, check_mode):
        """The drain plan (and the drained list written), like the module."""
        try:
            return mod.make_drain(params, check_mode)
        except mod.DrainRefused as exc:
            raise AnsibleActionFail("drain refused, nothing was changed: %s" % exc)
