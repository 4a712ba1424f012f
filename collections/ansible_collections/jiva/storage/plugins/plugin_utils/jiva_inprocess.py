# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Run a control-node jiva module inside ansible-playbook (action plugin base): no module start-up.

The failover play's localhost steps (probe, plan) are plain Python on the control node; started as
modules each costs a Python start-up plus AnsiballZ unpacking (1-1.5 s on a loaded host) on the
failover's critical path. When the task runs with the local connection the action plugin validates
the arguments against the module's ARGUMENT_SPEC and calls the module's core function in process;
otherwise (localhost reached over SSH, delegated elsewhere) it runs the module as usual.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


class InProcessAction(ActionBase):
    """Subclasses set MODULE (FQCN), ARGUMENT_SPEC and implement core(params, check_mode)."""

    MODULE = ""
    ARGUMENT_SPEC = {}
    _supports_check_mode = True
    _supports_async = False

    def core(self, params, check_mode):
        """The module's result dict for validated params; raise AnsibleActionFail on errors."""
        raise NotImplementedError

    def run(self, tmp=None, task_vars=None):
        """Validate, then run in process (local connection) or as a module (anything else)."""
        result = super(InProcessAction, self).run(tmp, task_vars)
        del tmp
        if getattr(self._connection, "transport", None) != "local":
            result.update(
                self._execute_module(
                    module_name=self.MODULE, module_args=self._task.args, task_vars=task_vars
                )
            )
            return result
        _validation, params = self.validate_argument_spec(argument_spec=self.ARGUMENT_SPEC)
        try:
            result.update(self.core(params, bool(self._task.check_mode)))
        except AnsibleActionFail:
            raise
        except Exception as exc:  # a bug must fail the task with its message, like a module would
            raise AnsibleActionFail("%s: %s: %s" % (self.MODULE, exc.__class__.__name__, exc))
        return result
