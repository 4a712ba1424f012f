#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: configure and run one jiva volume controller (iSCSI target + API) on a host."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: controller
short_description: Manage one jiva volume controller (iSCSI target and management API)
version_added: "0.1.0"
description:
  - Writes the controller's service config (C(CONFIG_DIR/controller-NAME.env), mode 0600) and
    separate 0600 files for the replica secret, the CHAP secret and the API token, then manages
    its service.
  - The voters of the volume are its O(replicas) and O(witnesses); O(quorum) says whether the
    controller needs a majority of them.
  - With systemd the template unit C(jiva@controller-NAME.service) runs it (Restart=on-failure).
    Without systemd a supervisor started with setsid restarts it after a crash and keeps a pidfile.
  - Idempotent; reports changed only when the config or the service state changed. A config
    change of a running controller restarts it (initiators reconnect).
author:
  - jiva-py contributors (@jiva-py)
options:
  name:
    description: Volume name. Required unless O(instances).
    type: str
  state:
    description:
      - C(present) writes the config only; C(started) also makes sure it runs; C(stopped) stops it
        and keeps the config; C(absent) stops it and removes the config.
    type: str
    choices: [present, started, stopped, absent]
    default: started
  portal:
    description: HOST:PORT of the iSCSI portal initiators log in to.
    type: str
  api:
    description: HOST:PORT of the management HTTP API.
    type: str
  replicas:
    description: HOST:PORT of every replica of the volume.
    type: list
    elements: str
  witnesses:
    description:
      - HOST:PORT of every witness of the volume (metadata-only voters, M(jiva.storage.witness));
        each becomes a C(--witness) argument. Placement gives a 2-replica volume one witness.
    type: list
    elements: str
    default: []
    version_added: "0.2.0"
  quorum:
    description:
      - C(majority) - the controller records a membership change, and a restarted controller
        claims the volume, only on a majority of the voters (replicas plus witnesses); without a
        majority it holds I/O (state C(no quorum)). C(off) - the older policy, serving down to
        the last current member (for clusters of two hosts).
      - Unset passes no C(--quorum), so the engine's default (majority) applies.
    type: str
    choices: [majority, "off"]
    version_added: "0.2.0"
  size:
    description: Volume size (C(512M), C(10G), or bytes).
    type: str
  replica_timeout:
    description: Seconds after which an unresponsive replica is dropped from the membership.
    type: float
  rebuild_rate:
    description:
      - Rebuild bandwidth limit in MiB/s (C(--rebuild-rate)), a positive number; omitted, no limit
        (only O(rebuild_pacing)).
      - A number since 0.7.0 (was an integer).
    type: float
  rebuild_pacing:
    description:
      - C(--rebuild-pacing on|off) - slow rebuilds down while the volume's foreground I/O latency
        rises (docs/ENGINE.md "Rebuild pacing"); under O(rebuild_rate) when both are set.
      - Omitted, the engine's default (on).
    type: bool
    version_added: "0.7.0"
  slow_replica_floor:
    description:
      - Lag ejection (C(--slow-replica-floor); docs/ENGINE.md, A slow replica is not a slow
        volume) - a replica whose oldest request is unanswered this many seconds (and
        O(slow_replica_factor) times its peers' p99 answer time) while its peers answer is
        ejected. Seconds >= 0; V(0) or V(off) - no lag ejection, only O(replica_timeout).
      - Omitted, the engine's default (1).
    type: raw
    version_added: "0.7.0"
  slow_replica_factor:
    description:
      - How many times its peers' p99 answer time a replica must lag to be ejected
        (C(--slow-replica-factor)); a number above 1, or V(0) / V(off) for no lag ejection.
      - Omitted, the engine's default (4).
    type: raw
    version_added: "0.7.0"
  slow_replica_window:
    description:
      - How long in seconds a replica's p99 answer time must stay O(slow_replica_factor) times
        its peers' to be ejected (C(--slow-replica-window)); V(0) or V(off) - only stalls eject.
      - Omitted, the engine's default (5).
    type: raw
    version_added: "0.7.0"
  scrub_interval:
    description:
      - How long after the previous scrub finished (or after the start) the controller scrubs the
        volume again, such as V(7d), V(12h) or V(30m); V(off) or V(0) only scrubs on request.
        Omitted, the engine default (off).
    type: str
    version_added: "0.4.0"
  scrub_rate:
    description: Scrub pace in MiB/s of volume (omitted, the engine default of 64).
    type: float
    version_added: "0.4.0"
  max_snapshots:
    description: Most snapshots the volume may hold (1-250), checked before one is taken
      (omitted, the engine default of 64).
    type: int
    version_added: "0.5.0"
  max_iops:
    description:
      - "QoS: most reads, writes and unmaps per second the volume's initiators get (C(--max-iops),
        a token bucket; rebuilds, resyncs, scrubs and snapshot transfers are not limited).
        Omitted, unlimited. Changed at runtime with C(jiva qos set) without a restart; a
        changed value here restarts the controller."
    type: int
    version_added: "0.7.0"
  max_mbps:
    description:
      - "QoS: most MiB/s the volume's initiators read and write (C(--max-mbps)). Omitted,
        unlimited."
    type: float
    version_added: "0.7.0"
  secret:
    description: Shared controller/replica secret (0600 file).
    type: str
  previous_secret:
    description:
      - The shared secret being rotated out (0600 file C(CONFIG_DIR/controller-NAME.previous-secret),
        removed when empty). The controller presents O(secret) and, to a replica or witness that
        refuses it, this one. Needs O(secret). See "Rotating the replica secret or the API token"
        in docs/ANSIBLE.md.
    type: str
    version_added: "0.3.0"
  token:
    description: Bearer token that mutating API calls must carry (0600 file).
    type: str
  previous_token:
    description:
      - The API token being rotated out (0600 file C(CONFIG_DIR/controller-NAME.previous-token),
        removed when empty); accepted next to O(token) until it is removed. Needs O(token).
    type: str
    version_added: "0.3.0"
  chap_user:
    description: CHAP user name initiators must log in with.
    type: str
  chap_secret:
    description: CHAP secret (0600 file), 12 to 255 characters.
    type: str
  allowed_initiators:
    description: Initiator IQNs allowed to log in (empty = any).
    type: list
    elements: str
    default: []
  api_tls_cert:
    description:
      - PEM certificate (chain) file on the host that the management API presents
        (C(--api-tls-cert)); the API then speaks HTTPS only. Needs O(api_tls_key).
      - The file's content counts as part of the config, so a changed certificate restarts
        a running controller (or reports it RV(restart_pending) with O(restart=false)).
    type: path
    version_added: "0.6.0"
  api_tls_key:
    description:
      - PEM private key file of O(api_tls_cert) on the host (C(--api-tls-key); keep it 0600).
        Its content counts as part of the config like the certificate's.
    type: path
    version_added: "0.6.0"
extends_documentation_fragment:
  - jiva.storage.instances
  - jiva.storage.service
"""

EXAMPLES = r"""
- name: Serve volume db
  jiva.storage.controller:
    name: db
    portal: "10.0.0.100:3260"
    api: "10.0.0.100:9800"
    replicas: ["10.0.0.1:9700", "10.0.0.2:9700", "10.0.0.3:9700"]
    quorum: majority
    size: 10G
    chap_user: dbuser
    chap_secret: "{{ vault_db_chap_secret }}"
    allowed_initiators: [iqn.1993-08.org.debian:01:client1]

- name: Serve volume logs (two replicas and a witness on a third host)
  jiva.storage.controller:
    name: logs
    portal: "10.0.0.101:3260"
    api: "10.0.0.101:9801"
    replicas: ["10.0.0.1:9701", "10.0.0.2:9701"]
    witnesses: ["10.0.0.3:9701"]
    quorum: majority
    size: 1G

- name: Stop it, keep its config
  jiva.storage.controller:
    name: db
    state: stopped
    portal: "10.0.0.100:3260"
    api: "10.0.0.100:9800"
    replicas: ["10.0.0.1:9700"]
"""

RETURN = r"""
name:
  description: Service name (C(controller-VOLUME)).
  returned: always
  type: str
  sample: controller-db
service_manager:
  description: The service manager used.
  returned: always
  type: str
  sample: daemon
config_file:
  description: Path of the env file.
  returned: always
  type: str
  sample: /etc/jiva/controller-db.env
pidfile:
  description: The supervisor's pidfile (daemon manager only).
  returned: always
  type: str
  sample: /run/jiva/controller-db.pid
log_file:
  description: The log file (daemon manager only).
  returned: always
  type: str
  sample: /var/log/jiva/controller-db.log
actions:
  description: Service actions taken (or that would be taken in check mode).
  returned: always
  type: list
  elements: str
  sample: [restart]
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
  sample: [/etc/jiva/controller-db.env]
created_dirs:
  description: Directories created (none for a controller).
  returned: always
  type: list
  elements: str
  sample: []
data_removed:
  description: Always false (a controller holds no data).
  returned: always
  type: bool
  sample: false
args:
  description: The jiva command line (without secrets).
  returned: always
  type: list
  elements: str
  sample: [controller, --volume, db, --api, "10.0.0.100:9800", --portal, "10.0.0.100:3260", --replica, "10.0.0.1:9700",
           --replica, "10.0.0.2:9700", --witness, "10.0.0.3:9700", --quorum, majority]
"""

import os

from ansible_collections.jiva.storage.plugins.module_utils.jiva_batch import (
    batch_module,
    run_instances,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_inventory import (
    CONTROLLER_OPTIONS,
    controller_option,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_service import (
    SERVICE_COMMON_ARGS,
    Service,
    check_previous,
    ensure,
    secret_files,
)


def daemon_args(p):
    """The `jiva controller` options for the module's parameters `p` (without the TLS and
    secret-file options, which need files)."""
    args = ["--volume", p["name"], "--api", p["api"], "--portal", p["portal"]]
    for r in p["replicas"]:
        args += ["--replica", r]
    for w in p["witnesses"]:
        args += ["--witness", w]
    if p["quorum"]:
        args += ["--quorum", p["quorum"]]
    if p["size"]:
        args += ["--size", p["size"]]
    if p["replica_timeout"] is not None:
        args += ["--replica-timeout", "%g" % p["replica_timeout"]]
    # the tuning options, normalised (controller_option: "0" and "off" alike, numbers as %g)
    for opt in CONTROLLER_OPTIONS:
        value = controller_option(opt, p.get(opt))
        if value is not None:
            args += ["--" + opt.replace("_", "-"), value]
    if p["scrub_interval"] is not None:
        args += ["--scrub-interval", p["scrub_interval"]]
    if p["scrub_rate"] is not None:
        args += ["--scrub-rate", "%g" % p["scrub_rate"]]
    if p["max_snapshots"] is not None:
        args += ["--max-snapshots", str(p["max_snapshots"])]
    if p.get("max_iops") is not None:
        args += ["--max-iops", str(p["max_iops"])]
    if p.get("max_mbps") is not None:
        args += ["--max-mbps", "%g" % p["max_mbps"]]
    if p["chap_user"]:
        args += ["--chap-user", p["chap_user"]]
    for iqn in p["allowed_initiators"]:
        args += ["--allow-initiator", iqn]
    return args


def main():
    """Run the module."""
    argument_spec = dict(
        name=dict(type="str", required=True),  # (or instances: jiva_batch)
        state=dict(
            type="str", default="started", choices=["present", "started", "stopped", "absent"]
        ),
        portal=dict(type="str"),
        api=dict(type="str"),
        replicas=dict(type="list", elements="str"),
        witnesses=dict(type="list", elements="str", default=[]),
        quorum=dict(type="str", choices=["majority", "off"]),
        size=dict(type="str"),
        replica_timeout=dict(type="float"),
        rebuild_rate=dict(type="float"),
        rebuild_pacing=dict(type="bool"),
        slow_replica_floor=dict(type="raw"),
        slow_replica_factor=dict(type="raw"),
        slow_replica_window=dict(type="raw"),
        scrub_interval=dict(type="str"),
        scrub_rate=dict(type="float"),
        max_snapshots=dict(type="int"),
        max_iops=dict(type="int"),
        max_mbps=dict(type="float"),
        secret=dict(type="str", no_log=True),
        previous_secret=dict(type="str", no_log=True),
        token=dict(type="str", no_log=True),
        previous_token=dict(type="str", no_log=True),
        chap_user=dict(type="str"),
        chap_secret=dict(type="str", no_log=True),
        allowed_initiators=dict(type="list", elements="str", default=[]),
        api_tls_cert=dict(type="path"),
        api_tls_key=dict(type="path"),
    )
    argument_spec.update(SERVICE_COMMON_ARGS)
    module = batch_module(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[
            ("state", "present", ("portal", "api", "replicas")),
            ("state", "started", ("portal", "api", "replicas")),
            ("state", "stopped", ("portal", "api", "replicas")),
        ],
        required_together=[("chap_user", "chap_secret"), ("api_tls_cert", "api_tls_key")],
    )
    run_instances(module, one_controller)


def one_controller(module):
    """Bring one controller to its state (the module's options, or one of its instances)."""
    p = module.params
    name = p["name"]
    if p["state"] != "absent" and not p["replicas"]:
        module.fail_json(msg="controller %s: replicas must list at least one HOST:PORT" % name)
    if p["chap_secret"] is not None and not 12 <= len(p["chap_secret"]) <= 255:
        module.fail_json(
            msg="controller %s: chap_secret must be 12 to 255 characters (RFC 7143)" % name
        )
    for opt in ("max_iops", "max_mbps"):
        if p[opt] is not None and not 0 < p[opt] < float("inf"):
            module.fail_json(msg="controller %s: %s must be positive, got %s" % (name, opt, p[opt]))
    for opt in CONTROLLER_OPTIONS:
        try:
            controller_option(opt, p[opt])
        except ValueError as exc:
            module.fail_json(msg="controller %s: %s %s" % (name, opt, exc))
    check_previous(module, [("secret", "previous_secret"), ("token", "previous_token")])
    svc = Service(module, "controller", name)
    args = []
    if p["state"] != "absent":
        args = daemon_args(p)
        if p["api_tls_cert"]:
            if not module.check_mode:
                for opt in ("api_tls_cert", "api_tls_key"):
                    if not os.path.isfile(p[opt]):
                        module.fail_json(msg="controller %s: %s %s is not a file" % (name, opt, p[opt]))
            args += ["--api-tls-cert", p["api_tls_cert"], "--api-tls-key", p["api_tls_key"]]
    secret_args, files = secret_files(
        module,
        svc,
        [
            ("secret", "--secret-file", p["secret"]),
            ("previous-secret", "--previous-secret-file", p["previous_secret"]),
            ("token", "--token-file", p["token"]),
            ("previous-token", "--previous-token-file", p["previous_token"]),
            ("chap", "--chap-secret-file", p["chap_secret"]),
        ],
    )
    args += secret_args
    ensure(module, "controller", name, args, files)


if __name__ == "__main__":
    main()
