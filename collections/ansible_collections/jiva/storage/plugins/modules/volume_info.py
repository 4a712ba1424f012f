#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: read a jiva volume's live state from its controller's management API."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: volume_info
short_description: Read the live state of a jiva volume from its management API
version_added: "0.1.0"
description:
  - Calls C(GET /v1/volume) on the controller's management API and returns the status document
    (state, epoch, portal, replicas with their mode and rebuild progress, degraded flag).
  - Uses only the Python standard library (urllib) on the host it runs on.
  - Never fails because the volume is unhealthy; it fails only when O(fail_on_unreachable=true)
    and the API cannot be reached. Use C(until) on RV(serving) to wait for a volume.
author:
  - jiva-py contributors (@jiva-py)
options:
  api:
    description: HOST:PORT of the volume's management API. Required unless O(instances).
    type: str
  name:
    description: Expected volume name; a different name in the answer is reported as an error.
    type: str
  token:
    description: Bearer token, when the API requires one.
    type: str
  timeout:
    description: Seconds to wait for the answer.
    type: float
    default: 3.0
  fail_on_unreachable:
    description: Fail the task when the API cannot be reached (otherwise return RV(reachable=false)).
    type: bool
    default: false
extends_documentation_fragment:
  - jiva.storage.api_client
  - jiva.storage.instances
attributes:
  check_mode:
    support: full
    description: Changes nothing in any mode, so it runs in check mode as usual.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to diff.
"""

EXAMPLES = r"""
- name: Wait until db serves I/O
  jiva.storage.volume_info:
    api: "10.0.0.100:9800"
    name: db
  register: db
  until: db.serving
  retries: 30
  delay: 1
"""

RETURN = r"""
reachable:
  description: Whether the API answered.
  returned: always
  type: bool
  sample: true
serving:
  description: Whether the volume is serving I/O (C(state == serving)).
  returned: always
  type: bool
  sample: true
error:
  description: Why the API could not be read, or the name mismatch.
  returned: when something went wrong
  type: str
  sample: "cannot reach http://10.0.0.100:9800/v1/volume: [Errno 111] Connection refused"
volume:
  description: The status document of C(GET /v1/volume).
  returned: when reachable
  type: dict
  sample:
    name: db
    size: 10737418240
    state: serving
    reason: ""
    epoch: 3
    portal: "10.0.0.100:3260"
    iqn: "iqn.2026-11.org.jiva-py:db"
    replicas:
      - {address: "10.0.0.1:9700", mode: RW, epoch: 3, rebuild: null, last_error: null}
    degraded: false
"""

from ansible_collections.jiva.storage.plugins.module_utils.jiva_batch import (
    batch_module,
    run_instances,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_api import (
    API_CLIENT_ARGS,
    ApiError,
    get_json,
)


def main():
    """Run the module."""
    argument_spec = dict(
        api=dict(type="str", required=True),
        name=dict(type="str"),
        token=dict(type="str", no_log=True),
        timeout=dict(type="float", default=3.0),
        fail_on_unreachable=dict(type="bool", default=False),
    )
    argument_spec.update(API_CLIENT_ARGS)
    module = batch_module(key="api", argument_spec=argument_spec, supports_check_mode=True)
    run_instances(module, one_volume)


def one_volume(module):
    """Read one volume's state (the module's options, or one of its instances)."""
    p = module.params
    try:
        doc = get_json(
            p["api"], "/v1/volume", token=p["token"], timeout=p["timeout"], ca=p["api_ca"]
        )
    except ApiError as exc:
        if p["fail_on_unreachable"]:
            module.fail_json(msg=str(exc), reachable=False, serving=False)
        module.exit_json(changed=False, reachable=False, serving=False, error=str(exc))
    result = dict(changed=False, reachable=True, volume=doc, serving=doc.get("state") == "serving")
    if p["name"] and doc.get("name") != p["name"]:
        result["serving"] = False
        result["error"] = "API %s serves volume %r, expected %r" % (
            p["api"],
            doc.get("name"),
            p["name"],
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
