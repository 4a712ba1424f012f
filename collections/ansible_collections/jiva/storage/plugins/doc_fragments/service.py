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
attributes:
  check_mode:
    support: full
    description: Reports what would change (files, start/stop/restart) without changing anything.
  diff_mode:
    support: full
    description: Shows the service config before and after; secret files are named, never shown.
"""
