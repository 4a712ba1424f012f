#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: grow a serving jiva volume online to the size the inventory gives."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: volume_grow
short_description: Grow jiva volumes online to the sizes given (never shrink)
version_added: "0.3.0"
description:
  - Reads each volume's size from its controller (C(GET /v1/volume)), all volumes at once. When
    the size given is larger, calls C(POST /v1/volume/grow) - the controller grows every replica
    that takes writes, then serves the new size and raises the unit attention CAPACITY DATA HAS
    CHANGED, so initiators rescan. Nothing is restarted and I/O keeps flowing.
  - A smaller size fails the task before anything is grown, with a message naming every such
    volume and both sizes (a volume never shrinks). The same size changes nothing.
  - A volume whose API cannot be reached (not deployed yet, or its controller is down) is left
    alone and reported with C(reachable=false) in RV(volumes).
  - Uses only the Python standard library on the host it runs on.
author:
  - jiva-py contributors (@jiva-py)
options:
  volumes:
    description:
      - The volumes, each a mapping with C(name), C(api) (HOST:PORT of its management API) and
        C(size) (C(512M), C(10G), C(1T) or bytes); other keys are ignored, so the C(volumes)
        result of M(jiva.storage.placement) can be given as it is.
    type: list
    elements: dict
    required: true
  check_only:
    description: Only compare (fail on a shrink, report which volumes a grow is due for); never grow.
    type: bool
    default: false
  token:
    description: Bearer token of the APIs (needed for the grow when the API has one).
    type: str
  timeout:
    description: Seconds to wait for a volume's status; a grow waits up to 10 times this for every
      replica to record the size.
    type: float
    default: 3.0
extends_documentation_fragment:
  - jiva.storage.api_client
attributes:
  check_mode:
    support: full
    description: Reports the grows that would be done (changed) without doing them.
  diff_mode:
    support: full
    description: Shows the sizes before and after.
"""

EXAMPLES = r"""
- name: Refuse shrinking a volume before any host is touched
  jiva.storage.volume_grow:
    volumes: "{{ jiva_validated.volumes }}"
    check_only: true

- name: Grow db online
  jiva.storage.volume_grow:
    volumes:
      - {name: db, api: "10.0.0.100:9800", size: 20G}
"""

RETURN = r"""
volumes:
  description: One entry per volume, in the order given.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: db, reachable: true, old_size: 10737418240, size: 21474836480, grow: true}
    - {name: new, reachable: false, grow: false, error: "cannot reach http://10.0.0.101:9801/v1/volume: ..."}
grown:
  description: Names of the volumes grown (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [db]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_api import (
    API_CLIENT_ARGS,
    ApiError,
    get_json,
    request_json,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_ha import parallel
from ansible_collections.jiva.storage.plugins.module_utils.jiva_placement import parse_size


def read_size(vol, want, token, timeout, ca=None):
    """{name, reachable, old_size, size, grow[, error]} of one volume from its API."""
    row = dict(name=vol["name"], reachable=False, grow=False)
    try:
        doc = get_json(vol["api"], "/v1/volume", token=token, timeout=timeout, ca=ca)
    except ApiError as exc:
        row["error"] = str(exc)
        return row
    row["reachable"] = True
    if doc.get("name") != vol["name"]:
        row["error"] = "API %s serves volume %r, not %r" % (
            vol["api"],
            doc.get("name"),
            vol["name"],
        )
        return row
    row.update(old_size=int(doc["size"]), size=int(doc["size"]), grow=want > int(doc["size"]))
    return row


def grow(vol, want, token, timeout, ca=None):
    """POST /v1/volume/grow; None or the reason it failed."""
    try:
        request_json(
            vol["api"], "POST", "/v1/volume/grow", body={"size": want}, token=token,
            timeout=timeout, ca=ca,
        )  # fmt: skip
    except ApiError as exc:
        return str(exc)
    return None


def main():
    """Run the module."""
    argument_spec = dict(
        volumes=dict(type="list", elements="dict", required=True),
        check_only=dict(type="bool", default=False),
        token=dict(type="str", no_log=True),
        timeout=dict(type="float", default=3.0),
    )
    argument_spec.update(API_CLIENT_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    wants = []
    for i, vol in enumerate(p["volumes"]):
        missing = [k for k in ("name", "api", "size") if not vol.get(k)]
        if missing:
            module.fail_json(msg="volumes[%d] has no %s" % (i, ", ".join(missing)))
        try:
            wants.append(parse_size(vol["size"]))
        except ValueError as exc:
            module.fail_json(msg="volume %r: size: %s" % (vol["name"], exc))
    rows = parallel(
        [
            (lambda v=v, w=w: read_size(v, w, p["token"], p["timeout"], p["api_ca"]))
            for v, w in zip(p["volumes"], wants)
        ]
    )
    wrong = [r["error"] for r in rows if r["reachable"] and r.get("error")]
    shrink = [
        "volume %r is %d bytes but jiva_volumes gives size %s (%d bytes)"
        % (r["name"], r["old_size"], v["size"], w)
        for r, v, w in zip(rows, p["volumes"], wants)
        if r.get("old_size", 0) > w
    ]
    if wrong or shrink:
        module.fail_json(
            msg="; ".join(wrong + shrink)
            + (
                ": a volume never shrinks; set the size back to at least its current size "
                "(nothing was changed)"
                if shrink
                else ""
            ),
            volumes=rows,
        )
    due = [(r, v, w) for r, v, w in zip(rows, p["volumes"], wants) if r["grow"]]
    result = dict(volumes=rows, grown=[r["name"] for r, _v, _w in due])
    if due:
        result["diff"] = dict(
            before="".join("%s: %d\n" % (r["name"], r["old_size"]) for r, _v, _w in due),
            after="".join("%s: %d\n" % (r["name"], w) for r, _v, w in due),
        )
    if p["check_only"] or module.check_mode or not due:
        module.exit_json(changed=bool(due) and not p["check_only"], **result)
    errors = parallel(
        [(lambda v=v, w=w: grow(v, w, p["token"], 10 * p["timeout"], p["api_ca"])) for _r, v, w in due]
    )
    failed = ["%s: %s" % (r["name"], e) for (r, _v, _w), e in zip(due, errors) if e]
    for (r, _v, w), e in zip(due, errors):
        if not e:
            r["size"] = w
    if failed:
        module.fail_json(msg="growing failed: " + "; ".join(failed), **result)
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
