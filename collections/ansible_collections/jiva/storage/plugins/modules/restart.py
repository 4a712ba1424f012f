#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: restart configured jiva services from their config files (the rolling play's step)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: restart
short_description: Restart configured jiva services from the config on disk
version_added: "0.2.0"
description:
  - Restarts each named service (C(KIND-VOLUME), e.g. C(replica-db)) from its config files as
    they are on disk (C(CONFIG_DIR/KIND-VOLUME.env) and its secret files, written earlier by
    M(jiva.storage.replica), M(jiva.storage.witness) or M(jiva.storage.controller) with
    C(restart=false)), starts it when it is not running, and records what it was started with
    (C(RUN_DIR/KIND-VOLUME.started)), so that those modules no longer report it
    C(restart_pending).
  - The services are restarted one after the other, then watched together for O(alive_check)
    seconds. The rolling play of C(site.yml)/C(upgrade.yml) calls it with the replicas and
    witnesses of one host (one voter per volume), then with each controller alone.
  - Always reports changed (outside check mode it always restarts).
author:
  - jiva-py contributors (@jiva-py)
options:
  services:
    description: Service names C(KIND-VOLUME), KIND one of C(replica), C(witness), C(controller).
    type: list
    elements: str
    required: true
  config_dir:
    description: Directory of the service config files.
    type: path
    default: /etc/jiva
  run_dir:
    description: Directory of pidfiles and start records.
    type: path
    default: /run/jiva
  log_dir:
    description: Directory of log files (daemon service manager).
    type: path
    default: /var/log/jiva
  venv:
    description: Virtual environment holding the jiva engine.
    type: path
    default: /opt/jiva/venv
  service_manager:
    description: C(systemd), C(daemon) (setsid + supervisor + pidfile), or C(auto) (systemd when it runs).
    type: str
    choices: [auto, systemd, daemon]
    default: auto
  start_timeout:
    description: Seconds to wait for each supervisor's pidfile after a start.
    type: float
    default: 15.0
  alive_check:
    description: Seconds to watch the restarted processes for a crash before reporting success (0 = off).
    type: float
    default: 1.0
attributes:
  check_mode:
    support: full
    description: Reports the restarts without doing them.
  diff_mode:
    support: none
    description: No config changes here.
"""

EXAMPLES = r"""
- name: Restart the replica and the witness this host holds
  jiva.storage.restart:
    services: [replica-db, witness-logs]
"""

RETURN = r"""
restarted:
  description: The services restarted (or started), in order.
  returned: always
  type: list
  elements: str
  sample: [replica-db, witness-logs]
pids:
  description: The new supervisor PID of each service (daemon manager; empty with systemd).
  returned: always
  type: dict
  sample: {replica-db: 4242}
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.jiva.storage.plugins.module_utils.jiva_service import (
    SERVICE_COMMON_ARGS,
    Service,
    read_file,
)

KINDS = ("replica", "witness", "controller")


def main():
    """Run the module."""
    spec = dict(services=dict(type="list", elements="str", required=True))
    for key in (
        "config_dir",
        "run_dir",
        "log_dir",
        "venv",
        "service_manager",
        "start_timeout",
        "alive_check",
    ):
        spec[key] = SERVICE_COMMON_ARGS[key]
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    svcs = []
    for name in p["services"]:
        kind, _sep, volume = name.partition("-")
        if kind not in KINDS or not volume:
            module.fail_json(
                msg="%r is not a jiva service name (KIND-VOLUME, KIND: %s)"
                % (name, ", ".join(KINDS))
            )
        svc = Service(module, kind, volume)
        if not os.path.exists(svc.env_path):
            module.fail_json(msg="%s is not configured on this host (no %s)" % (name, svc.env_path))
        svcs.append(svc)
    pids = {}
    if not module.check_mode:
        for svc in svcs:
            svc.restart()
        if p["alive_check"] > 0:
            time.sleep(p["alive_check"])
        for svc in svcs:
            if svc.manager != "daemon":
                continue
            pid = svc._pid()
            if pid is None or read_file(svc.pidfile + ".crashes") is not None:
                tail = (read_file(svc.logfile) or "")[-2000:]
                module.fail_json(
                    msg="%s is not running after its restart; log tail:\n%s" % (svc.name, tail),
                    restarted=[s.name for s in svcs],
                    pids=pids,
                )
            pids[svc.name] = pid
    module.exit_json(changed=bool(svcs), restarted=[s.name for s in svcs], pids=pids)


if __name__ == "__main__":
    main()
