# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Documentation fragment: the `instances` option (module_utils.jiva_batch)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Several services of one kind in one module call."""

    DOCUMENTATION = r"""
options:
  instances:
    description:
      - Several services of this kind in one call (one module start for all of a host's volumes
        instead of one per volume); each element is a dict of this module's options for one
        service (what names one service, as a call of its own would need it). Options given at the top level apply to every instance that
        does not set them. Each instance is checked and brought to its state as a call of its own
        would be; the result's C(results) has one entry per instance, shaped like a loop's
        (C(item.name), C(changed), C(restart_pending), ...). The call fails when one instance
        fails, after the others were handled, with their messages.
      - Mutually exclusive with the option that names one service (C(name); C(api) for
        M(jiva.storage.volume_info)); one of the two is required.
    type: list
    elements: dict
    version_added: "0.7.0"
"""
