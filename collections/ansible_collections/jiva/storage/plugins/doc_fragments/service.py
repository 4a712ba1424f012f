# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Documentation fragment: the service options the replica and controller modules share."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options of module_utils.jiva_service.SERVICE_COMMON_ARGS and the attributes of both modules."""

    DOCUMENTATION = r"""
options:
  config_dir:
    description: Directory of the service config files.
    type: path
    default: /etc/jiva
  run_dir:
    description: Directory of pidfiles (daemon service manager).
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
  engine_revision:
    description: Identifies the installed engine build; written into the config so an upgrade restarts the process.
    type: str
    default: ""
  start_timeout:
    description: Seconds to wait for the supervisor's pidfile after a start.
    type: float
    default: 15.0
  alive_check:
    description: Seconds to watch a freshly started process for a crash before reporting success (0 = off).
    type: float
    default: 1.0
  restart:
    description:
      - Whether a running service whose config changed is restarted. With C(false) its files are
        written but it keeps running, and the result says RV(restart_pending=true); a later
        M(jiva.storage.restart) (the rolling play of C(site.yml)/C(upgrade.yml)) restarts it.
      - What a process was started with is recorded in C(RUN_DIR/KIND-VOLUME.started) (a hash of
        its env file and the secret files it names); RV(restart_pending) is also true when the
        files are unchanged but the process still runs an older config (an earlier run deferred
        its restart). A change of C(--size) alone never calls for a restart (volumes grow online).
    type: bool
    default: true
  applied_online:
    description:
      - The running process already runs the config being written (it was changed through the
        management API, e.g. replicas added and removed by C(drain.yml)). The files are written and
        recorded as what it was started with, without a restart (not RV(restart_pending)).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports what would change (files, start/stop/restart) without changing anything.
  diff_mode:
    support: full
    description: Shows the service config before and after; secret files are named, never shown.
"""
