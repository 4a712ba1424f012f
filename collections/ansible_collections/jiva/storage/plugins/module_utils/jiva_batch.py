# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""One module call for every service of one kind on a host: the `instances` option.

A role that loops a module over a host's volumes pays one module start (AnsiballZ payload,
Python, imports; one SSH round trip on a remote host) per volume: ~0.5 s each, 25 s per host for
50 volumes. The replica, witness and controller modules therefore also take `instances`, a list
of option dicts: each instance is the module's options given at the top level with the
instance's own on top, checked against the module's own argument spec and rules (the same
messages as a call of its own), and brought to its state in turn by the module's code for one
service. The result holds `results`, one per instance, shaped like a loop's (`item.name`,
`changed`, `restart_pending`, ...), so what reads a loop's registered result reads it unchanged.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

RULES = ("mutually_exclusive", "required_together", "required_one_of", "required_if", "required_by")


class InstanceDone(Exception):
    """An instance's code called exit_json: its result."""

    def __init__(self, result):
        Exception.__init__(self, "done")
        self.result = result


class InstanceFailed(Exception):
    """An instance's code called fail_json: its message and result."""

    def __init__(self, msg, result):
        Exception.__init__(self, msg)
        self.msg = msg
        self.result = result


class InstanceModule(object):
    """What the code for one service sees in place of the AnsibleModule when it runs as one
    instance of several: the instance's checked options, the module's check mode, and
    exit_json/fail_json that end this instance only."""

    def __init__(self, module, params):
        self._module = module
        self.params = params
        self.check_mode = module.check_mode

    def exit_json(self, **result):
        raise InstanceDone(result)

    def fail_json(self, msg, **result):
        raise InstanceFailed(msg, result)

    def __getattr__(self, name):
        return getattr(self._module, name)


def batch_module(key="name", **kwargs):
    """An AnsibleModule built from a module's own AnsibleModule keyword arguments that also takes
    `instances` (instead of the option `key`, which names one service). Without `instances` it is
    the module as it was: the spec's required options and rules are checked, with the same
    messages. With it, they are checked per instance by run_instances()."""
    strict = kwargs["argument_spec"]
    spec = dict((k, dict(v, required=False)) for k, v in strict.items())
    spec["instances"] = dict(type="list", elements="dict")
    loose = dict((k, v) for k, v in kwargs.items() if k not in RULES)
    loose["argument_spec"] = spec
    loose["mutually_exclusive"] = [(key, "instances")]
    loose["required_one_of"] = [(key, "instances")]
    module = AnsibleModule(**loose)
    module.jiva_key = key
    module.jiva_validator = ArgumentSpecValidator(
        strict, **dict((r, kwargs[r]) for r in RULES if r in kwargs)
    )
    return module


def _checked(module, given):
    """The options `given` checked against the module's own spec: (params, error message)."""
    res = module.jiva_validator.validate(given)
    module.no_log_values.update(res._no_log_values)
    if res.error_messages:
        return None, res.errors.msg
    return res.validated_parameters, None


def run_instances(module, one):
    """Run `one(m)`, the module's code for one service (it ends with m.exit_json or
    m.fail_json), for the top-level options alone or for each of `instances`; exit the module."""
    # (options not given are left out: the spec's check then sees a required one missing)
    top = dict((k, v) for k, v in module.params.items() if k != "instances" and v is not None)
    instances = module.params["instances"]
    if instances is None:
        params, error = _checked(module, top)
        if error:
            module.fail_json(msg=error)
        module.params = params
        one(module)
        return
    results, failed, diffs = [], [], []
    for given in instances:
        merged = dict(top)
        merged.update(given)
        name = merged.get("name", merged.get(module.jiva_key))
        params, error = _checked(module, merged)
        if error:
            result = dict(failed=True, msg="%s: %s" % (name, error))
        else:
            try:
                one(InstanceModule(module, params))
                raise AssertionError("the code for one service did not exit")
            except InstanceDone as done:
                result = done.result
            except InstanceFailed as fail:
                result = dict(fail.result, failed=True, msg=fail.msg)
        result["item"] = dict(name=name)
        if result.get("failed"):
            failed.append(result["msg"])
        if "diff" in result:
            diffs.append(result.pop("diff"))
        results.append(result)
    out = dict(changed=any(r.get("changed") for r in results), results=results)
    if diffs:
        out["diff"] = diffs
    if failed:
        module.fail_json(msg="; ".join(str(m) for m in failed), **out)
    module.exit_json(**out)
