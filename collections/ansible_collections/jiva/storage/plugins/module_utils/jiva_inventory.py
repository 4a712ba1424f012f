# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Inventory checks that need every storage host at once (one machine listed twice, addresses
that are not addresses, hosts that disagree about the volumes, bad controller tuning values),
for the validation play; controller_option also checks the controller module's options."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import math
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


# The controller tuning options (module option -> `jiva controller` flag value) set cluster-wide
# by the role variables jiva_OPTION; empty or unset = the engine's default (the flag is omitted).
CONTROLLER_OPTIONS = (
    "slow_replica_floor",
    "slow_replica_factor",
    "slow_replica_window",
    "rebuild_rate",
    "rebuild_pacing",
)
_OFF = ("off", "no", "none", "false")
_ON = ("on", "yes", "true")
_ACCEPTS = {
    "slow_replica_floor": "seconds >= 0 (0 or off: no lag ejection)",
    "slow_replica_factor": "a number above 1 (0 or off: no lag ejection)",
    "slow_replica_window": "seconds >= 0 (0 or off: only stalls eject)",
    "rebuild_rate": "a positive number (MiB/s)",
    "rebuild_pacing": "on or off",
}


def controller_option(option, value):
    """The `jiva controller` flag value for the tuning option `option` (CONTROLLER_OPTIONS) given
    as `value` (text, number or a YAML boolean): None when empty or unset (the engine's default),
    else a normalised string (0 and off alike are "off", numbers as %g, so one setting gives one
    config fingerprint); ValueError saying what the option accepts otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip().lower()
    if option == "rebuild_pacing":
        if value is True or text in _ON:
            return "on"
        if value is False or text in _OFF:
            return "off"
        raise ValueError("must be %s, got %r" % (_ACCEPTS[option], value))
    if option not in _ACCEPTS:
        raise ValueError("is not a controller tuning option")
    if value is False or text in _OFF:
        if option == "rebuild_rate":
            raise ValueError("must be %s, got %r" % (_ACCEPTS[option], value))
        return "off"
    try:
        number = float(text) if value is not True else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        raise ValueError("must be %s, got %r" % (_ACCEPTS[option], value))
    if option == "rebuild_rate":
        ok = number > 0
    elif option == "slow_replica_factor":
        # a replica merely as slow as its peers (factor 1) must never count as lagging
        ok = number == 0 or number > 1
    else:
        ok = number >= 0
    if not ok:
        raise ValueError("must be %s, got %r" % (_ACCEPTS[option], value))
    if number == 0:
        return "off"
    return "%g" % number


def controller_option_problems(name, values):
    """Messages naming the host and variable for each bad jiva_OPTION in `values` (a dict
    option -> value of host `name`; CONTROLLER_OPTIONS)."""
    out = []
    for option in CONTROLLER_OPTIONS:
        try:
            controller_option(option, values.get(option))
        except ValueError as exc:
            out.append("host %r: jiva_%s %s" % (name, option, exc))
    return out


def inventory_problems(hosts):
    """Messages naming the variable for every problem among `hosts`, a list of dicts
    {name, address, ansible_host (None when unset), volumes_set, volumes, and optionally
    controller_options: {option: value} of the jiva_OPTION variables set}; [] when fine."""
    out = []
    seen = {}  # type: dict[str, str]
    first = None
    for h in hosts:
        name = h["name"]
        if h.get("address"):
            why = address_problem(name, h["address"])
            if why:
                out.append(why)
        out += controller_option_problems(name, h.get("controller_options") or {})
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
