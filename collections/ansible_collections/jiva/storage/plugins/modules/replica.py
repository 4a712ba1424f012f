#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: configure and run one jiva replica (one volume on one host)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: replica
short_description: Manage one jiva replica process (one volume on one host)
version_added: "0.1.0"
description:
  - Writes the replica's service config (C(CONFIG_DIR/replica-NAME.env), mode 0600, and a 0600
    secret file when O(secret) is set) and manages its service.
  - With systemd the template unit C(jiva@replica-NAME.service) runs it (Restart=on-failure).
    Without systemd a supervisor (C(python -m jiva_engine.supervise)) is started with setsid; it
    restarts the replica after a crash with backoff and keeps a pidfile in O(run_dir).
  - Idempotent; reports changed only when the config or the service state changed. A config
    change of a running replica restarts it.
author:
  - jiva-py contributors (@jiva-py)
options:
  name:
    description: Volume name.
    type: str
    required: true
  state:
    description:
      - C(present) writes the config only; C(started) also makes sure it runs (restarting it when
        the config changed); C(stopped) stops it and keeps the config; C(absent) stops it and
        removes the config (and the data only with O(delete_data=true)).
    type: str
    choices: [present, started, stopped, absent]
    default: started
  listen:
    description: HOST:PORT the replica listens on (the controller connects to it).
    type: str
  data_dir:
    description: Directory of the volume's data (C(volume.img), C(meta.json), C(dirty.map)).
    type: path
  size:
    description: Volume size (C(512M), C(10G), or bytes).
    type: str
  secret:
    description: Shared controller/replica secret; written to a 0600 file, never to the env file.
    type: str
  delete_data:
    description: With O(state=absent), also delete O(data_dir). Nothing else deletes data.
    type: bool
    default: false
extends_documentation_fragment:
  - jiva.storage.service
"""

EXAMPLES = r"""
- name: Run the replica of volume db on this host
  jiva.storage.replica:
    name: db
    listen: "10.0.0.1:9700"
    data_dir: /var/lib/jiva/db
    size: 10G
    state: started

- name: Remove it and its data
  jiva.storage.replica:
    name: db
    state: absent
    data_dir: /var/lib/jiva/db
    delete_data: true
"""

RETURN = r"""
name:
  description: Service name (C(replica-VOLUME)).
  returned: always
  type: str
  sample: replica-db
service_manager:
  description: The service manager used.
  returned: always
  type: str
  sample: daemon
config_file:
  description: Path of the env file.
  returned: always
  type: str
  sample: /etc/jiva/replica-db.env
pidfile:
  description: The supervisor's pidfile (daemon manager only).
  returned: always
  type: str
  sample: /run/jiva/replica-db.pid
log_file:
  description: The log file (daemon manager only).
  returned: always
  type: str
  sample: /var/log/jiva/replica-db.log
actions:
  description: Service actions taken (or that would be taken in check mode).
  returned: always
  type: list
  elements: str
  sample: [start]
changed_files:
  description: Config files written or removed.
  returned: always
  type: list
  elements: str
  sample: [/etc/jiva/replica-db.env]
created_dirs:
  description: Directories created (the data directory on first start).
  returned: always
  type: list
  elements: str
  sample: [/var/lib/jiva/db]
data_removed:
  description: Whether the data directory was (or would be) deleted.
  returned: always
  type: bool
  sample: false
args:
  description: The jiva command line (without secrets).
  returned: always
  type: list
  elements: str
  sample: [replica, --volume, db, --listen, "10.0.0.1:9700", --dir, /var/lib/jiva/db, --size, 10G]
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_service import (
    SERVICE_COMMON_ARGS,
    Service,
    ensure,
)


def main():
    """Run the module."""
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(
            type="str", default="started", choices=["present", "started", "stopped", "absent"]
        ),
        listen=dict(type="str"),
        data_dir=dict(type="path"),
        size=dict(type="str"),
        secret=dict(type="str", no_log=True),
        delete_data=dict(type="bool", default=False),
    )
    argument_spec.update(SERVICE_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[
            ("state", "present", ("listen", "data_dir", "size")),
            ("state", "started", ("listen", "data_dir", "size")),
            ("state", "stopped", ("listen", "data_dir", "size")),
            ("delete_data", True, ("data_dir",)),
        ],
    )
    p = module.params
    name = p["name"]
    svc = Service(module, "replica", name)
    files = {}
    args = []
    if p["state"] != "absent":
        args = [
            "--volume",
            name,
            "--listen",
            p["listen"],
            "--dir",
            p["data_dir"],
            "--size",
            p["size"],
        ]
    secret_path = svc.secret_path("secret")
    if p["secret"]:
        args += ["--secret-file", secret_path]
        files[secret_path] = (p["secret"], 0o600, True)
    else:
        files[secret_path] = (None, 0o600, True)

    def cleanup(check=False):
        if not p["delete_data"] or not p["data_dir"] or not os.path.isdir(p["data_dir"]):
            return False
        if p["data_dir"].rstrip("/") in ("", "/"):
            module.fail_json(msg="refusing to delete data_dir %r" % p["data_dir"])
        if not check:
            shutil.rmtree(p["data_dir"])
        return True

    ensure(
        module,
        "replica",
        name,
        args,
        files,
        data_cleanup=cleanup,
        dirs=[p["data_dir"]] if p["data_dir"] else [],
    )


if __name__ == "__main__":
    main()
