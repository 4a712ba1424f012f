# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Documentation fragment: the options of the voter modules (replica, witness)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options of module_utils.jiva_service.VOTER_ARGS: a service that keeps something of one
    volume on this host (a replica its blocks, a witness its metadata) and votes on its membership."""

    DOCUMENTATION = r"""
options:
  name:
    description: Volume name. Required unless O(instances).
    type: str
  state:
    description:
      - C(present) writes the config only; C(started) also makes sure it runs (restarting it when
        the config changed); C(stopped) stops it and keeps the config; C(absent) stops it and
        removes the config (and the data folder only with O(delete_data=true)).
    type: str
    choices: [present, started, stopped, absent]
    default: started
  listen:
    description:
      - HOST:PORT it listens on (the volume's controller connects to it). Required unless
        O(state=absent).
    type: str
  data_dir:
    description:
      - Folder of what it keeps of the volume on this host; created (mode 0700) unless
        O(state=absent). Required unless O(state=absent).
    type: path
  secret:
    description:
      - Shared controller/replica/witness secret; written to a 0600 file
        (C(CONFIG_DIR/KIND-NAME.secret)), never to the env file, never logged.
    type: str
  previous_secret:
    description:
      - The shared secret being rotated out, accepted next to O(secret) until it is removed;
        written to C(CONFIG_DIR/KIND-NAME.previous-secret) (0600), removed when empty. Needs
        O(secret). See "Rotating the replica secret or the API token" in docs/ANSIBLE.md.
    type: str
    version_added: "0.3.0"
  metrics:
    description:
      - HOST:PORT of its Prometheus metrics listener (C(GET /metrics), no token; C(--metrics)).
        Unset or empty - no listener (the engine's default).
    type: str
    version_added: "0.5.0"
  delete_data:
    description: With O(state=absent), also delete O(data_dir). Nothing else deletes data.
    type: bool
    default: false
"""
