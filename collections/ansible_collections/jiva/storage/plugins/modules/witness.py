#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: configure and run one jiva witness (the metadata-only voter of one volume) on a host."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: witness
short_description: Manage one jiva witness process (the metadata-only voter of one volume)
version_added: "0.2.0"
description:
  - A witness is the third voter of a volume with two replicas. It keeps only the volume's
    membership metadata (a few KiB in C(DATA_DIR/meta.json)), never data, so that the controller
    can record a new membership on a majority of voters (2 of 3) after losing one replica's host,
    and a restarted controller can tell which replica is current.
  - Writes the witness's service config (C(CONFIG_DIR/witness-NAME.env), mode 0600, and a 0600
    secret file when O(secret) is set) and manages its service like M(jiva.storage.replica) -
    the template unit C(jiva@witness-NAME.service) with systemd, else a supervisor started with
    setsid that restarts it after a crash and keeps a pidfile in O(run_dir).
  - Idempotent; reports changed only when the config or the service state changed. A config
    change of a running witness restarts it.
author:
  - jiva-py contributors (@jiva-py)
options:
  data_dir:
    description:
      - Folder of the witness's metadata. The roles use C(jiva_data_dir/_witness/NAME), which is
        never a replica's folder (C(jiva_data_dir/NAME); volume names cannot start with C(_)).
    type: path
notes:
  - The witness listens on the host's address and the volume's replica port; placement
    (M(jiva.storage.placement)) never puts a replica and a witness of one volume on one host.
  - Pass the same O(secret) as the volume's replicas and controller.
extends_documentation_fragment:
  - jiva.storage.voter
  - jiva.storage.instances
  - jiva.storage.service
"""

EXAMPLES = r"""
- name: Run the witness of volume db on this host
  jiva.storage.witness:
    name: db
    listen: "10.0.0.3:9700"
    data_dir: /var/lib/jiva/_witness/db
    secret: "{{ vault_jiva_replica_secret }}"
    state: started

- name: Remove it and its metadata
  jiva.storage.witness:
    name: db
    state: absent
    data_dir: /var/lib/jiva/_witness/db
    delete_data: true
"""

RETURN = r"""
name:
  description: Service name (C(witness-VOLUME)).
  returned: always
  type: str
  sample: witness-db
state:
  description: The state asked for.
  returned: always
  type: str
  sample: started
service_manager:
  description: The service manager used.
  returned: always
  type: str
  sample: daemon
config_file:
  description: Path of the env file.
  returned: always
  type: str
  sample: /etc/jiva/witness-db.env
pidfile:
  description: The supervisor's pidfile (daemon manager only).
  returned: always
  type: str
  sample: /run/jiva/witness-db.pid
log_file:
  description: The log file (daemon manager only).
  returned: always
  type: str
  sample: /var/log/jiva/witness-db.log
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
  sample: [/etc/jiva/witness-db.env]
created_dirs:
  description: Directories created (the metadata folder on first start).
  returned: always
  type: list
  elements: str
  sample: [/var/lib/jiva/_witness/db]
data_removed:
  description: Whether the metadata folder was (or would be) deleted.
  returned: always
  type: bool
  sample: false
args:
  description: The jiva command line (without secrets).
  returned: always
  type: list
  elements: str
  sample: [witness, --volume, db, --listen, "10.0.0.3:9700", --dir, /var/lib/jiva/_witness/db]
"""

from ansible_collections.jiva.storage.plugins.module_utils.jiva_batch import (
    batch_module,
    run_instances,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_service import (
    ensure_voter,
    voter_module_kwargs,
)


def main():
    """Run the module."""
    module = batch_module(**voter_module_kwargs())
    run_instances(module, lambda m: ensure_voter(m, "witness"))


if __name__ == "__main__":
    main()
