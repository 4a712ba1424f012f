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
  - A O(size) smaller than the size the replica in O(data_dir) recorded (a volume only grows,
    online, through the controller's API) fails before anything changes.
author:
  - jiva-py contributors (@jiva-py)
options:
  data_dir:
    description: Directory of the volume's data (C(volume.img), C(meta.json), C(dirty.map)).
    type: path
  size:
    description: Volume size (C(512M), C(10G), or bytes). Required unless O(state=absent).
    type: str
extends_documentation_fragment:
  - jiva.storage.voter
  - jiva.storage.instances
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
restart_pending:
  description:
    - The service runs but was started with another config than the one written (O(restart=false)
      deferred the restart, now or in an earlier run); a C(--size) change alone does not count.
  returned: always
  type: bool
  sample: false
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

import json
import os

from ansible_collections.jiva.storage.plugins.module_utils.jiva_batch import (
    batch_module,
    run_instances,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_placement import parse_size
from ansible_collections.jiva.storage.plugins.module_utils.jiva_service import (
    ensure_voter,
    voter_module_kwargs,
)


def recorded_size(data_dir):
    """The size the replica in `data_dir` recorded (meta.json), or None."""
    try:
        with open(os.path.join(data_dir, "meta.json")) as f:
            return int(json.load(f)["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def one_replica(module):
    """Bring one replica to its state (the module's options, or one of its instances)."""
    p = module.params
    args = []
    if p["state"] != "absent":
        try:
            want = parse_size(p["size"])
        except ValueError as exc:
            module.fail_json(msg="volume %r: size: %s" % (p["name"], exc))
        have = recorded_size(p["data_dir"])
        if have is not None and have > want:
            # the engine would refuse to start on it; say so before the config changes
            module.fail_json(
                msg="volume %r: the replica in %s holds %d bytes, more than the size given (%s, "
                "%d bytes): a volume never shrinks; nothing was changed"
                % (p["name"], p["data_dir"], have, p["size"], want)
            )
        args = ["--size", p["size"]]
    ensure_voter(module, "replica", args)


def main():
    """Run the module."""
    module = batch_module(**voter_module_kwargs(dict(size=dict(type="str")), required=("size",)))
    run_instances(module, one_replica)


if __name__ == "__main__":
    main()
