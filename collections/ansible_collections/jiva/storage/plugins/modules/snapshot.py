#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: make sure a jiva volume has (or has not) a snapshot of a given name."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: snapshot
short_description: Take or delete a snapshot of a jiva volume
version_added: "0.5.0"
description:
  - With O(state=present), takes a crash-consistent snapshot named O(name) of the volume whose
    management API is O(api) (C(POST /v1/snapshots)) unless one of that name exists. Every
    replica that takes writes snapshots at the same point of the write stream.
  - With O(state=absent), deletes the snapshot of that name if it exists (C(DELETE
    /v1/snapshots/NAME)); its space is merged into its neighbour and reclaimed.
  - The controller refuses a new snapshot when the volume holds its limit of snapshots, while a
    replica is being rebuilt, or when the volume does not serve; the task then fails with the
    controller's message and nothing is changed.
  - Uses only the Python standard library on the host it runs on.
author:
  - jiva-py contributors (@jiva-py)
options:
  api:
    description: HOST:PORT of the volume's management API.
    type: str
    required: true
  name:
    description: The snapshot's name (letters, digits, C(.), C(_), C(-); up to 64 characters).
    type: str
    required: true
  state:
    description: Whether the snapshot should exist.
    type: str
    choices: [present, absent]
    default: present
  token:
    description: Bearer token of the API (needed to take or delete a snapshot when the API has one).
    type: str
  timeout:
    description: Seconds to wait for the API; a delete may take up to 20 times this.
    type: float
    default: 10.0
extends_documentation_fragment:
  - jiva.storage.api_client
attributes:
  check_mode:
    support: full
    description: Reports whether the snapshot would be taken or deleted, without doing it.
  diff_mode:
    support: none
    description: Not supported.
"""

EXAMPLES = r"""
- name: Snapshot db before an upgrade
  jiva.storage.snapshot:
    api: "10.0.0.100:9800"
    name: before-upgrade
    token: "{{ jiva_api_token }}"

- name: Delete it afterwards
  jiva.storage.snapshot:
    api: "10.0.0.100:9800"
    name: before-upgrade
    state: absent
    token: "{{ jiva_api_token }}"
"""

RETURN = r"""
snapshot:
  description: The snapshot (as the controller lists it) after the task; absent when deleted.
  returned: when it exists
  type: dict
  sample: {id: 5f0c9a0e4f1b4c43a3c1f2d4e5b6a7c8, name: before-upgrade, created: 1795000000.5, size: 10737418240}
snapshots:
  description: Names of the volume's snapshots after the task, oldest first.
  returned: success
  type: list
  elements: str
  sample: [nightly-1, before-upgrade]
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_api import (
    API_CLIENT_ARGS,
    ApiError,
    get_json,
    request_json,
)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def listed(api, token, timeout, ca=None):
    """The volume's snapshots, oldest first."""
    doc = get_json(api, "/v1/snapshots", token=token, timeout=timeout, ca=ca)
    snaps = doc.get("snapshots") if isinstance(doc, dict) else None
    if not isinstance(snaps, list):
        raise ApiError("GET /v1/snapshots on %s answered no snapshot list" % api)
    return snaps


def main():
    """Run the module."""
    argument_spec = dict(
        api=dict(type="str", required=True),
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        token=dict(type="str", no_log=True),
        timeout=dict(type="float", default=10.0),
    )
    argument_spec.update(API_CLIENT_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if not NAME.match(p["name"]):
        module.fail_json(
            msg="name %r: a snapshot name is 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit" % (p["name"],)
        )
    try:
        snaps = listed(p["api"], p["token"], p["timeout"], p["api_ca"])
    except ApiError as exc:
        module.fail_json(msg=str(exc))
    have = dict((s.get("name"), s) for s in snaps)
    exists = p["name"] in have
    want = p["state"] == "present"
    if exists == want:
        result = dict(changed=False, snapshots=[s.get("name") for s in snaps])
        if exists:
            result["snapshot"] = have[p["name"]]
        module.exit_json(**result)
    if module.check_mode:
        names = [s.get("name") for s in snaps if s.get("name") != p["name"]]
        module.exit_json(changed=True, snapshots=names + ([p["name"]] if want else []))
    try:
        if want:
            answer = request_json(
                p["api"], "POST", "/v1/snapshots", body={"name": p["name"]},
                token=p["token"], timeout=p["timeout"], ca=p["api_ca"],
            )  # fmt: skip
        else:
            answer = request_json(
                p["api"], "DELETE", "/v1/snapshots/%s" % p["name"],
                token=p["token"], timeout=20 * p["timeout"], ca=p["api_ca"],
            )  # fmt: skip
        snaps = listed(p["api"], p["token"], p["timeout"], p["api_ca"])
    except ApiError as exc:
        module.fail_json(
            msg="%s snapshot %r: %s" % ("taking" if want else "deleting", p["name"], exc)
        )
    result = dict(changed=True, snapshots=[s.get("name") for s in snaps])
    if want:
        result["snapshot"] = answer.get("snapshot") if isinstance(answer, dict) else None
    module.exit_json(**result)


if __name__ == "__main__":
    main()
