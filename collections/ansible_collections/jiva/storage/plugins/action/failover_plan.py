# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Action plugin for jiva.storage.failover_plan: plan inside ansible-playbook (no module start-up)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleActionFail
from ansible_collections.jiva.storage.plugins.module_utils import jiva_failover as mod
from ansible_collections.jiva.storage.plugins.plugin_utils.jiva_inprocess import InProcessAction


class ActionModule(InProcessAction):
    """Runs failover_plan.make_plan in process on the control node."""

    MODULE = "jiva.storage.failover_plan"
    ARGUMENT_SPEC = mod.ARGUMENT_SPEC

    def core(self, params, check_mode):
        """The plan (and the state file written), like the module."""
        try:
            result = mod.make_plan(params, check_mode)
        except mod.PlanError as exc:
            raise AnsibleActionFail(str(exc))
        return result
