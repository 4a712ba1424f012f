# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Inventory checks that need every storage host at once (one machine listed twice, addresses
that are not addresses, hosts that disagree about the volumes), for the validation play."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def address_problem(name, address):
    """Why `address` (host `name`'s jiva_address) is not a usable address, or None."""
    text = str(address)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_unspecified:
            return (
                "jiva_address of host %r is %s, which no other host can connect to: give the "
                "host's own address" % (name, text)
            )
        return None
    if re.match(r"^[0-9.]+$", text):
        return "jiva_address of host %r is not a valid IPv4 address: %r" % (name, text)
    labels = text.rstrip(".").split(".")
    if len(text) > 253 or not all(_LABEL.match(label) for label in labels):
        return "jiva_address of host %r is neither an IP address nor a host name: %r" % (
            name,
            text,
        )
    return None


def inventory_problems(hosts):
    """Messages naming the variable for every problem among `hosts`, a list of dicts
    {name, address, ansible_host (None when unset), volumes_set, volumes}; [] when fine."""
    out = []
    seen = {}  # type: dict[str, str]
    first = None
    for h in hosts:
        name = h["name"]
        if h.get("address"):
            why = address_problem(name, h["address"])
            if why:
                out.append(why)
        machine = h.get("ansible_host")
        if machine:
            if machine in seen:
                out.append(
                    "hosts %r and %r have the same ansible_host %r: they are one machine, so "
                    "two replicas of a volume could land on it; list each storage machine once"
                    % (seen[machine], name, machine)
                )
            else:
                seen[machine] = name
        if first is None:
            first = h
        elif (h.get("volumes_set"), h.get("volumes")) != (
            first.get("volumes_set"),
            first.get("volumes"),
        ):
            out.append(
                "host %r has a jiva_volumes that differs from the one of host %r: define "
                "jiva_volumes once for the group (group_vars/jiva_nodes.yml or all.yml), not in "
                "host_vars"
                % (name, first["name"])
            )
    return out
