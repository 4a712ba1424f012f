#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: report which jiva services a host has configured and running (for failover)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: node_state
short_description: Report the jiva controllers, replicas, witnesses and portal addresses of one host
version_added: "0.1.0"
description:
  - Lists the controller, replica and witness services configured on the host
    (C(CONFIG_DIR/KIND-VOL.env)), which of them have a live supervisor (daemon manager) or an
    active unit (systemd), which volumes have replica data (C(DATA_DIR/VOL/meta.json)) or witness
    metadata (C(DATA_DIR/_witness/VOL/meta.json)) and which addresses the portal interface holds.
    The failover play uses it to tell a dead process from a dead host.
  - It also lists the running services that still run an older config than their files say
    (RV(controllers_stale), RV(replicas_stale), RV(witnesses_stale)), whose restart was deferred
    (O(jiva.storage.replica#module:restart=false)); the rolling play restarts them.
  - Read-only.
author:
  - jiva-py contributors (@jiva-py)
options:
  config_dir:
    description: Directory of the service config files.
    type: path
    default: /etc/jiva
  run_dir:
    description: Directory of the supervisors' pidfiles.
    type: path
    default: /run/jiva
  data_dir:
    description: Directory holding one replica data folder per volume (and the witnesses' C(_witness) folder).
    type: path
    default: /var/lib/jiva
  interface:
    description: Interface that carries floating portal addresses (empty = do not look).
    type: str
    default: ""
  service_manager:
    description: C(systemd), C(daemon) or C(auto).
    type: str
    choices: [auto, systemd, daemon]
    default: auto
  controller_status:
    description: Ask every running controller for its state (RV(controller_status)).
    type: bool
    default: true
extends_documentation_fragment:
  - jiva.storage.api_client
attributes:
  check_mode:
    support: full
    description: Changes nothing.
  diff_mode:
    support: none
    description: Nothing changes.
"""

EXAMPLES = r"""
- name: What runs here
  jiva.storage.node_state:
    interface: eth0
  register: jiva_node
"""

RETURN = r"""
controllers:
  description: Volumes with a controller config on this host.
  returned: always
  type: list
  elements: str
  sample: [db]
controllers_running:
  description: Volumes whose controller service is up (supervisor alive or unit active).
  returned: always
  type: list
  elements: str
  sample: [db]
replicas:
  description: Volumes with a replica config on this host.
  returned: always
  type: list
  elements: str
  sample: [db]
replicas_running:
  description: Volumes whose replica service is up.
  returned: always
  type: list
  elements: str
  sample: [db]
controllers_stale:
  description:
    - Volumes whose controller runs but was started with another config than its files hold now
      (compared by the fingerprint recorded in C(RUN_DIR/controller-VOL.started); a C(--size)
      change alone does not count).
  returned: always
  type: list
  elements: str
  sample: []
replicas_stale:
  description: Volumes whose replica runs an older config than its files (like RV(controllers_stale)).
  returned: always
  type: list
  elements: str
  sample: [db]
witnesses_stale:
  description: Volumes whose witness runs an older config than its files (like RV(controllers_stale)).
  returned: always
  type: list
  elements: str
  sample: []
replica_data:
  description: Volumes with replica data (meta.json) on this host.
  returned: always
  type: list
  elements: str
  sample: [db]
witnesses:
  description: Volumes with a witness config on this host.
  returned: always
  type: list
  elements: str
  sample: [logs]
witnesses_running:
  description: Volumes whose witness service is up.
  returned: always
  type: list
  elements: str
  sample: [logs]
witness_data:
  description: Volumes with witness metadata (C(_witness/VOL/meta.json)) on this host.
  returned: always
  type: list
  elements: str
  sample: [logs]
portals:
  description: IPv4 addresses on the portal interface.
  returned: always
  type: list
  elements: str
  sample: [10.0.0.11, 10.0.0.100]
controller_status:
  description:
    - For every running controller, its own answer to C(GET /v1/volume) asked on this host (its API
      address is local here, so a floating portal address held by two hosts still reaches this one);
      C(state) and C(epoch), or C(state=unreachable). The plan uses it to tell the controller that
      claimed the volume last (highest epoch) from a stale one that came back.
  returned: always
  type: dict
  sample: {db: {state: serving, epoch: 7}}
ports:
  description:
    - For every volume with a service config here, the ports its env files name - C(replica_port)
      (C(--listen) of a replica or witness), C(api_port) and C(portal_host) (C(--api) and
      C(--portal) of a controller). Placement keeps a volume's ports from these.
  returned: always
  type: dict
  sample: {db: {replica_port: 9700, api_port: 9800, portal_host: 10.0.0.100}}
service_manager:
  description: The service manager in use (C(systemd) or C(daemon)).
  returned: always
  type: str
  sample: daemon
revision:
  description: Engine revision recorded in the service configs (empty when none).
  returned: always
  type: str
  sample: 3f2a...
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_api import (
    API_CLIENT_ARGS,
    ApiError,
    get_json,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_placement import WITNESS_SUBDIR
from ansible_collections.jiva.storage.plugins.module_utils.jiva_service import (
    config_fingerprint,
    env_args,
    read_file,
    supervisor_pid,
)

# service kind -> the result keys of its configured volumes (KEY) and running ones (KEY_running)
KINDS = {"controller": "controllers", "replica": "replicas", "witness": "witnesses"}


def _api_of(env_path):
    """The --api address in a controller's env file, or None."""
    words = env_args(env_path) or []
    return words[words.index("--api") + 1] if "--api" in words[:-1] else None


def _port_of(text):
    """The port of HOST:PORT / [V6]:PORT (None when there is none)."""
    port = (text or "").rsplit(":", 1)[-1] if ":" in (text or "") else ""
    return int(port) if port.isdigit() else None


def _ports_of(kind, env_path):
    """{replica_port} of a replica/witness env file, {api_port, portal_host} of a controller's."""
    words = env_args(env_path) or []
    opts = dict((w, words[i + 1]) for i, w in enumerate(words[:-1]) if w.startswith("--"))
    out = {}
    if kind in ("replica", "witness") and _port_of(opts.get("--listen")):
        out["replica_port"] = _port_of(opts["--listen"])
    if kind == "controller":
        if _port_of(opts.get("--api")):
            out["api_port"] = _port_of(opts["--api"])
        if opts.get("--portal"):
            out["portal_host"] = opts["--portal"].rsplit(":", 1)[0].strip("[]")
    return out


def _controller_status(api, ca=None):
    """{state, epoch} of the controller answering on `api` (asked from this host; HTTPS verified
    against the CA bundle `ca` when given)."""
    if not api:
        return {"state": "unknown", "epoch": None}
    try:
        doc = get_json(api, "/v1/volume", timeout=2, ca=ca)
        if not isinstance(doc, dict):
            raise ApiError("not a JSON object")
    except Exception as e:  # any failure means: this controller does not answer
        return {"state": "unreachable", "epoch": None, "error": str(e)[:200]}
    return {"state": doc.get("state"), "epoch": doc.get("epoch")}


def main():
    """Run the module."""
    module = AnsibleModule(
        argument_spec=dict(
            config_dir=dict(type="path", default="/etc/jiva"),
            run_dir=dict(type="path", default="/run/jiva"),
            data_dir=dict(type="path", default="/var/lib/jiva"),
            interface=dict(type="str", default=""),
            service_manager=dict(type="str", default="auto", choices=["auto", "systemd", "daemon"]),
            controller_status=dict(type="bool", default=True),
            **API_CLIENT_ARGS
        ),
        supports_check_mode=True,
    )
    p = module.params
    manager = p["service_manager"]
    if manager == "auto":
        manager = "systemd" if os.path.isdir("/run/systemd/system") else "daemon"
    out = dict(controllers=[], controllers_running=[], replicas=[], replicas_running=[], replica_data=[],
               witnesses=[], witnesses_running=[], witness_data=[],
               controllers_stale=[], replicas_stale=[], witnesses_stale=[],
               portals=[], revision="", service_manager=manager, controller_status={}, ports={})
    try:
        names = sorted(os.listdir(p["config_dir"]))
    except OSError:
        names = []
    for fname in names:
        if not fname.endswith(".env") or "-" not in fname:
            continue
        kind, _sep, vol = fname[:-4].partition("-")
        if kind not in KINDS:
            continue
        out[KINDS[kind]].append(vol)
        out["ports"].setdefault(vol, {}).update(_ports_of(kind, os.path.join(p["config_dir"], fname)))
        if not out["revision"]:
            try:
                with open(os.path.join(p["config_dir"], fname)) as f:
                    for line in f:
                        if line.startswith("# engine revision: "):
                            rev = line.split(":", 1)[1].strip()
                            out["revision"] = "" if rev == "unknown" else rev
            except (IOError, OSError):
                pass
    for kind, key in sorted(KINDS.items()):
        for vol in out[key]:
            name = "%s-%s" % (kind, vol)
            if manager == "systemd":
                rc, _o, _e = module.run_command(["systemctl", "is-active", "--quiet", "jiva@%s.service" % name])
                up = rc == 0
            else:
                up = supervisor_pid(os.path.join(p["run_dir"], name + ".pid")) is not None
            if up:
                out[key + "_running"].append(vol)
                recorded = (read_file(os.path.join(p["run_dir"], name + ".started")) or "").strip()
                now = config_fingerprint(read_file(os.path.join(p["config_dir"], name + ".env")), read_file)
                if recorded and now and recorded != now:
                    out[key + "_stale"].append(vol)
    for vol in out["controllers_running"] if p["controller_status"] else []:
        env = os.path.join(p["config_dir"], "controller-%s.env" % vol)
        out["controller_status"][vol] = _controller_status(_api_of(env), p["api_ca"])
    for key, folder in (("replica_data", p["data_dir"]),
                        ("witness_data", os.path.join(p["data_dir"], WITNESS_SUBDIR))):
        try:
            for vol in sorted(os.listdir(folder)):
                if os.path.exists(os.path.join(folder, vol, "meta.json")):
                    out[key].append(vol)
        except OSError:
            pass
    if p["interface"]:
        rc, stdout, _err = module.run_command(["ip", "-o", "-4", "addr", "show", "dev", p["interface"]])
        if rc == 0:
            for line in stdout.splitlines():
                words = line.split()
                if "inet" in words:
                    out["portals"].append(words[words.index("inet") + 1].split("/")[0])
    module.exit_json(changed=False, **out)


if __name__ == "__main__":
    main()
