# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Documentation fragment: the option of every module that calls the management API."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Option of module_utils.jiva_api.API_CLIENT_ARGS."""

    DOCUMENTATION = r"""
options:
  api_ca:
    description:
      - CA bundle (PEM file on the host the module runs on) to verify the management API's
        certificate against. When set the API is called over HTTPS (controllers started with
        C(--api-tls-cert)); the certificate must name the API's address (an IP SAN for an
        address) and verify against this bundle, or the call fails. Unset means plain HTTP.
      - The playbooks set it from the inventory's C(jiva_api_ca) (docs/ANSIBLE.md "TLS for the
        management API").
    type: path
    version_added: "0.6.0"
"""
