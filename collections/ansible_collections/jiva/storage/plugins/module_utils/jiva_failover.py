# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The failover plan behind jiva.storage.failover_plan (module and action plugin alike): read the
state file, plan (module_utils/jiva_ha.py), write the state file when it changed."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.jiva.storage.plugins.module_utils.jiva_ha import (
    load_state,
    plan,
    save_state_doc,
)

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
    """The module's result for validated params `p`; writes the state file when its content
    changes (`changed` says so; in check mode it says what would change).

    Shared by the module and the action plugin of the same name, which runs it inside
    ansible-playbook on the control node (no module start-up on the failover's critical path).
    """
    try:
        saved = load_state(p["state_file"])
    except ValueError as exc:
        raise PlanError(str(exc))
    result = plan(p["volumes"], p["nodes"], p["node_state"], p["hosts_down"], p["docs"], saved,
                  relocate=p["relocate_replicas"])
    result["changed"] = False
    if p["write_state"] and p["state_file"] and result["state"] != saved:
        result["changed"] = True  # the state file changes (or would, in check mode)
        if not check_mode:
            # (only `volumes`: the other keys, e.g. site.yml's `ports`, drain.yml's `drained`, are kept)
            save_state_doc(p["state_file"], {"volumes": result["state"]})
    rows = [[r["volume"], r["controller"], "; ".join(r["found"]), "; ".join(r["did"])] for r in result["report"]]
    if tabulate is not None:
        result["report_table"] = tabulate(rows, headers=["volume", "controller", "found", "did"])
    else:  # pragma: no cover
        result["report_table"] = "\n".join(" | ".join(str(c) for c in r) for r in rows)
    return result
