# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Action plugin for jiva.storage.volume_health: probe inside ansible-playbook (no module start-up)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleActionFail
from ansible_collections.jiva.storage.plugins.module_utils import jiva_health as mod
from ansible_collections.jiva.storage.plugins.plugin_utils.jiva_inprocess import InProcessAction


class ActionModule(InProcessAction):
    """Runs volume_health.health in process on the control node."""

    MODULE = "jiva.storage.volume_health"
    ARGUMENT_SPEC = mod.ARGUMENT_SPEC

    def core(self, params, check_mode):
        """The health rows, like the module (reads only; the JSON report is written in check mode too)."""
        try:
            return mod.health(params)
        except mod.HealthError as exc:
            raise AnsibleActionFail(str(exc), result=dict(exc.result))
