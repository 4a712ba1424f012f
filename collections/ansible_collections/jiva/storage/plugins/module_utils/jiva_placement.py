# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Inventory validation and replica placement (rendezvous hashing) for jiva volumes.

Pure functions, no Ansible imports, so the same code runs in the placement module and in unit tests.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import re

DEFAULT_PORTAL_PORT = 3260
DEFAULT_REPLICA_PORT_BASE = 9700
DEFAULT_API_PORT_BASE = 9800
DEFAULT_METRICS_PORT_BASE = 9900
QUORUM_POLICIES = ("majority", "off")
VOLUME_STATES = ("present", "absent")
UNLISTED_POLICIES = ("ignore", "refuse", "remove")
# A witness's metadata folder on its host: JIVA_DATA_DIR/_witness/VOLUME. A volume name starts with
# a lower-case letter or a digit, so no replica folder (JIVA_DATA_DIR/VOLUME) can ever be this one.
WITNESS_SUBDIR = "_witness"

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
_IQN_RE = re.compile(r"^(iqn\.\d{4}-\d{2}\.[^\s]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$")
SECTOR = 512


class PlacementError(ValueError):
    """An inventory problem; the message names the variable (and the volume) at fault."""


def parse_size(text):
    """Return bytes from `512M`, `10G`, `1T` or a byte count; ValueError when malformed."""
    if isinstance(text, bool):
        raise ValueError("invalid size %r" % (text,))
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise ValueError("invalid size %r: use bytes or a number with K, M, G or T" % (text,))
        value = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if value <= 0:
        raise ValueError("size must be positive, got %r" % (text,))
    if value % SECTOR:
        raise ValueError("size %r is not a multiple of %d bytes" % (text, SECTOR))
    return value


def split_hostport(text, default_port):
    """Split `HOST:PORT`, `[v6]:PORT` or `HOST` (then `default_port`); ValueError when malformed."""
    text = str(text).strip()
    if text.startswith("["):
        host, _sep, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _sep, port_s = text.partition(":")
    else:
        host, port_s = text, ""
    if not host:
        raise ValueError("address %r has no host" % (text,))
    if not port_s:
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError("invalid port in address %r" % (text,))
    return host, int(port_s)


def join_hostport(host, port):
    """Format HOST:PORT, bracketing IPv6 literals."""
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def hrw_score(volume, node, salt="replica"):
    """Rendezvous weight of `node` for `volume`: a stable 256-bit hash, highest wins."""
    digest = hashlib.sha256(("%s|%s|%s" % (salt, volume, node)).encode("utf-8")).hexdigest()
    return int(digest, 16)


def _port(value, what):
    if isinstance(value, bool) or value is None:
        raise PlacementError("%s must be a TCP port number, got %r" % (what, value))
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise PlacementError("%s must be a TCP port number, got %r" % (what, value))
    if not 0 < port < 65536:
        raise PlacementError("%s must be between 1 and 65535, got %r" % (what, value))
    return port


def validate_nodes(nodes):
    """Check the node list (name, address, eligible); return {name: node} in input order."""
    if not isinstance(nodes, list) or not nodes:
        raise PlacementError(
            "the inventory group 'jiva_nodes' is empty or missing: list the storage hosts in it"
        )
    out = {}
    addresses = {}  # type: dict[str, str]
    for node in nodes:
        name = node.get("name")
        if not name:
            raise PlacementError("a node in 'jiva_nodes' has no name")
        if name in out:
            raise PlacementError("node %r is listed twice in 'jiva_nodes'" % name)
        address = node.get("address")
        if not address or not isinstance(address, str):
            raise PlacementError(
                "host %r has no 'jiva_address' (the address its replicas listen on)" % name
            )
        if ":" in address and not address.count(":") > 1:
            raise PlacementError(
                "jiva_address of host %r must be an address without a port, got %r"
                % (name, address)
            )
        if address in addresses:
            raise PlacementError(
                "jiva_address %r of host %r is also used by host %r"
                % (address, name, addresses[address])
            )
        addresses[address] = name
        eligible = node.get("eligible", True)
        if not isinstance(eligible, bool):
            raise PlacementError(
                "jiva_eligible of host %r must be true or false, got %r" % (name, eligible)
            )
        out[name] = {"name": name, "address": address, "eligible": eligible}
    return out


def validate_volumes(
    volumes, replica_port_base=DEFAULT_REPLICA_PORT_BASE, api_port_base=DEFAULT_API_PORT_BASE
):
    """Normalise `jiva_volumes`: sizes in bytes, portal split; PlacementError on bad input.

    Ports are those given (`replica_port`, `api_port`); the others are None here and filled in by
    `assign_ports` (recorded, running, or the lowest free port from the bases). `state` is
    `present` (default) or `absent`; `delete_data: true` is allowed only with `state: absent`.
    The bases are checked here and used by `assign_ports`.
    """
    _port(replica_port_base, "jiva_replica_port_base")
    _port(api_port_base, "jiva_api_port_base")
    if volumes is None:
        raise PlacementError(
            "'jiva_volumes' is not defined: give the volumes as a list in group vars"
        )
    if not isinstance(volumes, list):
        raise PlacementError(
            "'jiva_volumes' must be a list of volumes, got %s" % type(volumes).__name__
        )
    out = []
    seen = {}  # type: dict[str, int]
    for index, vol in enumerate(volumes):
        where = "jiva_volumes[%d]" % index
        if not isinstance(vol, dict):
            raise PlacementError(
                "%s must be a mapping with name, size, replicas and portal" % where
            )
        known = {
            "name",
            "size",
            "replicas",
            "portal",
            "chap",
            "allowed_initiators",
            "nodes",
            "controller",
            "replica_port",
            "api_port",
            "witness",
            "quorum",
            "state",
            "delete_data",
            "qos",
        }
        unknown = sorted(set(vol) - known)
        if unknown:
            raise PlacementError(
                "%s has unknown keys %s (allowed: %s)"
                % (where, ", ".join(unknown), ", ".join(sorted(known)))
            )
        name = vol.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PlacementError(
                "%s.name must be lower-case letters, digits, '.' or '-' (at most 63), got %r"
                % (where, name)
            )
        where = "jiva_volumes[%d] (volume %r)" % (index, name)
        if name in seen:
            raise PlacementError(
                "duplicate volume name %r in jiva_volumes[%d] and jiva_volumes[%d]"
                % (name, seen[name], index)
            )
        seen[name] = index
        if "size" not in vol:
            raise PlacementError("%s has no 'size'" % where)
        try:
            size = parse_size(vol["size"])
        except ValueError as exc:
            raise PlacementError("%s.size: %s" % (where, exc))
        replicas = vol.get("replicas", 3)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise PlacementError(
                "%s.replicas must be a positive integer, got %r" % (where, replicas)
            )
        portal = vol.get("portal")
        if not portal or not isinstance(portal, str):
            raise PlacementError(
                "%s has no 'portal' (the address initiators log in to, HOST:PORT or HOST)" % where
            )
        try:
            portal_host, portal_port = split_hostport(portal, DEFAULT_PORTAL_PORT)
        except ValueError as exc:
            raise PlacementError("%s.portal: %s" % (where, exc))
        replica_port = api_port = None
        if vol.get("replica_port") is not None:
            replica_port = _port(vol["replica_port"], "%s.replica_port" % where)
        if vol.get("api_port") is not None:
            api_port = _port(vol["api_port"], "%s.api_port" % where)
        state = vol.get("state", "present")
        if state not in VOLUME_STATES:
            raise PlacementError(
                "%s.state must be 'present' or 'absent', got %r" % (where, state)
            )
        delete_data = vol.get("delete_data", False)
        if not isinstance(delete_data, bool):
            raise PlacementError(
                "%s.delete_data must be true or false (a YAML boolean), got %r" % (where, delete_data)
            )
        if delete_data and state != "absent":
            raise PlacementError(
                "%s.delete_data is true but the volume is not 'state: absent': data is deleted "
                "only for a volume being removed (set state: absent as well)" % where
            )
        chap = vol.get("chap")
        if chap is not None:
            if not isinstance(chap, dict) or not chap.get("user") or not chap.get("secret"):
                raise PlacementError("%s.chap must be a mapping with 'user' and 'secret'" % where)
            if not 12 <= len(str(chap["secret"])) <= 255:
                raise PlacementError(
                    "%s.chap.secret must be 12 to 255 characters (RFC 7143)" % where
                )
        max_iops, max_mbps = _qos(vol.get("qos"), where)
        initiators = vol.get("allowed_initiators", [])
        if not isinstance(initiators, list):
            raise PlacementError("%s.allowed_initiators must be a list of initiator IQNs" % where)
        for iqn in initiators:
            if not isinstance(iqn, str) or not _IQN_RE.match(iqn):
                raise PlacementError(
                    "%s.allowed_initiators: %r is not an iSCSI name (iqn./eui./naa.)" % (where, iqn)
                )
        pinned = vol.get("nodes", [])
        if not isinstance(pinned, list) or not all(isinstance(n, str) for n in pinned):
            raise PlacementError("%s.nodes must be a list of host names from 'jiva_nodes'" % where)
        if len(set(pinned)) != len(pinned):
            raise PlacementError("%s.nodes names a host twice: %s" % (where, ", ".join(pinned)))
        if len(pinned) > replicas:
            raise PlacementError(
                "%s.nodes pins %d hosts but the volume has only %d replicas"
                % (where, len(pinned), replicas)
            )
        controller = vol.get("controller")
        if controller is not None and not isinstance(controller, str):
            raise PlacementError("%s.controller must be a host name from 'jiva_nodes'" % where)
        quorum = vol.get("quorum", "majority")
        if quorum not in QUORUM_POLICIES:
            raise PlacementError(
                "%s.quorum must be 'majority' or 'off', got %r" % (where, quorum)
            )
        witness = vol.get("witness")
        if witness is not None and not isinstance(witness, bool):
            raise PlacementError(
                "%s.witness must be true or false (or left out: a witness when possible), got %r"
                % (where, witness)
            )
        if witness and replicas != 2:
            raise PlacementError(
                "%s.witness is true but the volume has %d replica%s: a witness is the third voter "
                "of a 2-replica volume only (with 3 replicas the replicas are the majority)"
                % (where, replicas, "" if replicas == 1 else "s")
            )
        if witness and quorum == "off":
            raise PlacementError(
                "%s.witness is true but %s.quorum is 'off': a witness only counts under "
                "quorum: majority" % (where, where)
            )
        out.append(
            {
                "name": name,
                "index": index,
                "size": str(vol["size"]),
                "size_bytes": size,
                "replicas": replicas,
                "portal": join_hostport(portal_host, portal_port),
                "portal_host": portal_host,
                "portal_port": portal_port,
                "replica_port": replica_port,
                "api_port": api_port,
                "api": join_hostport(portal_host, api_port) if api_port else None,
                "state": state,
                "delete_data": delete_data,
                "port_source": {
                    "replica_port": "explicit" if replica_port else None,
                    "api_port": "explicit" if api_port else None,
                },
                "chap_user": chap["user"] if chap else None,
                "chap_secret": chap["secret"] if chap else None,
                "allowed_initiators": list(initiators),
                "pinned": list(pinned),
                "pinned_controller": controller,
                "quorum": quorum,
                "want_witness": witness,
                "max_iops": max_iops,
                "max_mbps": max_mbps,
                "iqn": "iqn.2026-11.org.jiva-py:%s" % name,
            }
        )
    return out


def _qos(qos, where):
    """A volume's `qos: {max_iops: N, max_mbps: M}` (either or both; absent or null:
    unlimited) -> (max_iops, max_mbps); PlacementError naming the variable otherwise."""
    if qos is None:
        return None, None
    if not isinstance(qos, dict):
        raise PlacementError(
            "%s.qos must be a mapping with max_iops and/or max_mbps, got %r" % (where, qos)
        )
    unknown = sorted(set(qos) - {"max_iops", "max_mbps"})
    if unknown:
        raise PlacementError(
            "%s.qos has unknown keys %s (allowed: max_iops, max_mbps)" % (where, ", ".join(unknown))
        )
    iops, mbps = qos.get("max_iops"), qos.get("max_mbps")
    if iops is not None and (isinstance(iops, bool) or not isinstance(iops, int) or iops <= 0):
        raise PlacementError(
            "%s.qos.max_iops must be a positive integer (I/Os per second), got %r" % (where, iops)
        )
    if mbps is not None and (
        isinstance(mbps, bool)
        or not isinstance(mbps, (int, float))
        or not 0 < mbps < float("inf")
    ):
        raise PlacementError(
            "%s.qos.max_mbps must be a positive number (MiB/s), got %r" % (where, mbps)
        )
    return iops, (float(mbps) if mbps is not None else None)


PORT_SOURCES = {
    "explicit": "",
    "running": " (what the volume's services on the hosts use)",
    "recorded": " (recorded in the HA state file)",
    "assigned": " (assigned now)",
}


def _port_label(vol, key):
    """`replica_port 9701 (recorded in the HA state file)`: a port with where it comes from."""
    src = (vol.get("port_source") or {}).get(key) or "explicit"
    return "%s %d%s" % (key, vol[key], PORT_SOURCES.get(src, ""))


def _check_ports(volumes, nodes):
    """Fail when two listeners would bind the same HOST:PORT (replica ports must be unique per volume)."""
    by_replica_port = {}  # type: dict[int, str]
    for vol in volumes:
        if vol["replica_port"] is None:
            continue
        other = by_replica_port.get(vol["replica_port"])
        if other is not None:
            raise PlacementError(
                "port clash: jiva_volumes[%d] (volume %r) %s is also the replica_port of volume %r"
                % (vol["index"], vol["name"], _port_label(vol, "replica_port"), other)
            )
        by_replica_port[vol["replica_port"]] = vol["name"]
    bindings = {}  # type: dict[tuple[str, int], str]

    def bind(host, port, what):
        key = (host, port)
        if key in bindings:
            raise PlacementError(
                "port clash: %s and %s both use %s"
                % (bindings[key], what, join_hostport(host, port))
            )
        bindings[key] = what

    for vol in volumes:
        label = "jiva_volumes[%d] (volume %r)" % (vol["index"], vol["name"])
        bind(vol["portal_host"], vol["portal_port"], "%s.portal" % label)
        if vol["api_port"] is not None:
            src = PORT_SOURCES.get(vol["port_source"].get("api_port") or "explicit", "")
            bind(vol["portal_host"], vol["api_port"], "%s.api_port%s" % (label, src))
    for vol in volumes:
        if vol["replica_port"] is None:
            continue
        label = "jiva_volumes[%d] (volume %r)" % (vol["index"], vol["name"])
        for node in nodes.values():
            key = (node["address"], vol["replica_port"])
            if key in bindings:
                raise PlacementError(
                    "port clash: %s.replica_port and %s both use %s on host %r"
                    % (label, bindings[key], join_hostport(*key), node["name"])
                )


def metrics_port(replica_port, metrics_port_base, replica_port_base=DEFAULT_REPLICA_PORT_BASE):
    """The port of a replica's or witness's Prometheus listener (`--metrics`): the volume's
    replica port moved by (metrics base - replica base), so it is as stable as the replica port
    (9700 + i -> 9900 + i with the defaults). None when metrics are off (`metrics_port_base` 0)."""
    base = _port(metrics_port_base, "jiva_metrics_port_base") if metrics_port_base else 0
    if not base or replica_port is None:
        return None
    port = base + int(replica_port) - int(replica_port_base)
    if not 0 < port < 65536:
        raise PlacementError(
            "replica_port %s gives metrics port %d (jiva_metrics_port_base %d + replica_port - "
            "jiva_replica_port_base %s), not a TCP port" % (replica_port, port, base, replica_port_base)
        )
    return port


def _check_metrics_ports(volumes, nodes, metrics_port_base, replica_port_base):
    """Set each volume's `metrics_port`; fail when one would bind a port another listener of
    the storage hosts' addresses uses (a replica port, or an API or portal on such an address)."""
    taken = {}  # type: dict[int, str]
    addresses = set(n["address"] for n in nodes.values())
    for vol in volumes:
        label = "jiva_volumes[%d] (volume %r)" % (vol["index"], vol["name"])
        taken[vol["replica_port"]] = "%s.replica_port" % label
        if vol["portal_host"] in addresses:
            taken.setdefault(vol["portal_port"], "%s.portal" % label)
            if vol["api_port"] is not None:
                taken.setdefault(vol["api_port"], "%s.api_port" % label)
    for vol in volumes:
        vol["metrics_port"] = metrics_port(vol["replica_port"], metrics_port_base, replica_port_base)
        if vol["metrics_port"] is not None and vol["metrics_port"] in taken:
            raise PlacementError(
                "port clash: jiva_volumes[%d] (volume %r) metrics port %d (jiva_metrics_port_base "
                "+ replica_port %d - jiva_replica_port_base) is also the port of %s; change "
                "jiva_metrics_port_base (0 turns the replicas' metrics off)"
                % (vol["index"], vol["name"], vol["metrics_port"], vol["replica_port"],
                   taken[vol["metrics_port"]])
            )


def running_ports(by_host, recorded=None):
    """{volume: {replica_port, api_port, portal_host}} the services on the hosts use, from
    {host: {volume: {replica_port, api_port, portal_host}}} (jiva.storage.node_state `ports`). Hosts that
    disagree (a partial earlier run): the recorded port when one of them uses it, else the port
    most hosts use (the lowest on a tie)."""
    seen = {}  # type: dict[str, dict[str, dict[int, int]]]
    for _host, vols in sorted((by_host or {}).items()):
        for name, ports in sorted((vols or {}).items()):
            for key in ("replica_port", "api_port", "portal_host"):
                port = (ports or {}).get(key)
                if port is not None and not isinstance(port, bool):
                    counts = seen.setdefault(name, {}).setdefault(key, {})
                    counts[port] = counts.get(port, 0) + 1
    out = {}  # type: dict[str, dict]
    for name, keys in seen.items():
        rec = (recorded or {}).get(name) or {}
        for key, counts in keys.items():
            if rec.get(key) in counts:
                port = rec[key]
            else:
                port = max(sorted(counts), key=lambda p: counts[p])
            out.setdefault(name, {})[key] = port
    return out


def assign_ports(vols, recorded=None, running=None, replica_port_base=DEFAULT_REPLICA_PORT_BASE,
                 api_port_base=DEFAULT_API_PORT_BASE, reserved=()):
    """Fill in each validated volume's missing ports, in place; return the volumes.

    A port given in the inventory wins; else what the volume's running services use (`running`,
    {volume: {replica_port, api_port}}); else what the HA state file recorded (`recorded`, same
    shape); else a new one: BASE + the volume's index when that port is free (what clusters
    deployed before ports were recorded use), else the lowest free port from BASE. "Free" means
    used by no volume of the list (any kind of port, absent volumes included: a port is reused
    only once its old volume is gone) and not in `reserved` (ports of volumes still being removed).
    So a volume keeps its ports when others are removed or reordered.
    """
    recorded = recorded or {}
    running = running or {}
    taken = set(reserved)
    for vol in vols:
        for key in ("replica_port", "api_port"):
            if vol[key] is None:
                for source, table in (("running", running), ("recorded", recorded)):
                    port = (table.get(vol["name"]) or {}).get(key)
                    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
                        vol[key] = port
                        vol["port_source"][key] = source
                        break
            if vol[key] is not None:
                taken.add(vol[key])
    for vol in vols:
        for key, base in (("replica_port", replica_port_base), ("api_port", api_port_base)):
            if vol[key] is not None or vol.get("state") == "absent":
                continue
            port = base + vol["index"]
            if port in taken or port > 65535:
                port = base
                while port in taken:
                    port += 1
            if port > 65535:
                raise PlacementError(
                    "jiva_volumes[%d] (volume %r): no free %s left above %s"
                    % (vol["index"], vol["name"], key,
                       "jiva_replica_port_base" if key == "replica_port" else "jiva_api_port_base")
                )
            vol[key] = port
            vol["port_source"][key] = "assigned"
            taken.add(port)
        if vol["api_port"] is not None:
            vol["api"] = join_hostport(vol["portal_host"], vol["api_port"])
    return vols


def unlisted_volumes(vols, found):
    """{volume: [hosts]} of volumes whose services were found on hosts (`found`: {host: [volume]})
    but that are not in the list at all."""
    listed = set(v["name"] for v in vols)
    out = {}  # type: dict[str, list[str]]
    for host, names in sorted((found or {}).items()):
        for name in names or []:
            if name not in listed and host not in out.setdefault(name, []):
                out[name].append(host)
    return out


def wants_witness(vol):
    """Whether a validated volume gets a witness when a host is free for it: 2 replicas, quorum
    majority, and not `witness: false`."""
    return vol["replicas"] == 2 and vol["quorum"] == "majority" and vol["want_witness"] is not False


def _eligible_first(chosen, found, nodes_by_name):
    """`chosen` unless it is not an eligible node and another host in `found` is: a drained
    host that comes back still has the configs of what was moved off it (drain.yml)."""
    ok = [h for h in [chosen] + list(found or []) if h in nodes_by_name and nodes_by_name[h]["eligible"]]
    return ok[0] if ok else chosen


def place(
    nodes,
    volumes,
    existing=None,
    replica_port_base=DEFAULT_REPLICA_PORT_BASE,
    api_port_base=DEFAULT_API_PORT_BASE,
    **kwargs
):
    """The placed volumes of `plan_volumes` (the volumes with state present, in list order)."""
    return plan_volumes(nodes, volumes, existing, replica_port_base, api_port_base, **kwargs)["volumes"]


def _merge_down_layout(existing, layout, down):
    """`existing` (what reachable hosts run) plus what the HA state file's layout record says runs
    on the hosts in `down` (their services cannot be seen this run). Returns (merged, unknown):
    `unknown` are the volumes that run somewhere but have no layout record while hosts are down,
    so a down host may hold a part of them that nobody can see."""
    merged = dict((k, dict(v, replicas=list(v.get("replicas") or []))) for k, v in existing.items())
    for name, entry in merged.items():
        # two hosts with a controller config of one volume (a host that was cut off came back
        # with the one failover.yml replaced): the recorded one is the controller
        rec = (layout or {}).get(name)
        if (len(entry.get("controllers") or []) > 1 and isinstance(rec, dict)
                and rec.get("controller") in entry["controllers"]):
            entry["controller"] = rec["controller"]
    unknown = set()  # type: set[str]
    if not down:
        return merged, unknown
    for name in merged:
        if name not in (layout or {}):
            unknown.add(name)
    for name, rec in sorted((layout or {}).items()):
        if not isinstance(rec, dict):
            continue
        entry = merged.setdefault(name, {"replicas": [], "controller": None})
        for h in rec.get("replicas") or []:
            if h in down and h not in entry["replicas"]:
                entry["replicas"].append(h)
        if rec.get("controller") in down and not entry.get("controller"):
            entry["controller"] = rec["controller"]
        if rec.get("witness") in down and not entry.get("witness"):
            entry["witness"] = rec["witness"]
    return merged, unknown


def plan_volumes(
    nodes,
    volumes,
    existing=None,
    replica_port_base=DEFAULT_REPLICA_PORT_BASE,
    api_port_base=DEFAULT_API_PORT_BASE,
    recorded_ports=None,
    running=None,
    down=None,
    layout=None,
    unlisted="ignore",
    metrics_port_base=0,
):
    """Validate everything, then place each volume's replicas, controller and witness.

    Returns {"volumes": the placed volumes with state present, "removed": the volumes to stop and
    unconfigure everywhere, "ports": the port record to keep, "unlisted": {volume: [hosts]}}.

    Ports: see `assign_ports` (`recorded_ports` from the HA state file, `running` from the
    services' env files). Volumes with `state: absent` are not placed; they are in "removed"
    (with `delete_data`). Volumes that run (in `existing`) but are not in the list at all:
    `unlisted="refuse"` fails naming them, "remove" adds them to "removed" (data kept), "ignore"
    leaves them alone.

    Replicas: pinned nodes first, then replicas that already exist (from `existing`, a mapping
    volume -> {"replicas": [node..], "controller": node, "witness": node}) on eligible nodes, then
    the eligible nodes with the highest rendezvous weight (the host of an existing witness of the
    volume last). Never two replicas of one volume on one node; adding nodes never moves an
    existing replica. The controller stays where it is, else the pinned one, else the replica node
    with the highest controller weight (a pinned controller may share a host with a replica).

    Hosts in `down` are unreachable this run: what they run is unknown, so `layout` (the HA state
    file's {volume: {controller, replicas, witness}}) stands in for them, and nothing moves off
    them. New replicas, controllers and witnesses go to reachable hosts first; but a volume that
    runs without a layout record (the state file is new or lost) may have a part on a down host,
    so there a down host is taken first (never a second copy on a reachable one).

    Witness (a metadata-only third voter; volumes with exactly 2 replicas and quorum majority,
    unless `witness: false`): an eligible host that holds no replica of the volume. An existing
    witness stays where it is; else the candidate with the highest witness weight, preferring
    hosts that are not giving up a replica of the volume in this placement and hosts other than
    the controller's. None when no such host exists (an error when the volume says
    `witness: true`). It listens on the host's address and the volume's replica port.

    Metrics (`metrics_port_base` > 0): each volume gets `metrics_port` (see `metrics_port`),
    checked against the other ports; its replicas and witness serve `--metrics` there
    (`replica_metrics`, `witness_metrics`: HOST:PORT, like the addresses).

    Raises PlacementError before anything is returned when any volume cannot be placed.
    """
    if unlisted not in UNLISTED_POLICIES:
        raise PlacementError("unlisted must be one of %s" % ", ".join(UNLISTED_POLICIES))
    nodes_by_name = validate_nodes(nodes)
    all_vols = validate_volumes(volumes, replica_port_base, api_port_base)
    existing = existing or {}
    down = set(down or ())
    recorded_ports = dict(recorded_ports or {})
    running = running or {}
    found = {}  # type: dict[str, list[str]]
    for name, entry in existing.items():
        hosts = list(entry.get("replicas") or [])
        for h in (entry.get("controller"), entry.get("witness")):
            if h and h not in hosts:
                hosts.append(h)
        for h in hosts:
            found.setdefault(h, []).append(name)
    stray = unlisted_volumes(all_vols, found)
    if stray and unlisted == "refuse":
        listed_none = not [v for v in all_vols if v["state"] == "present"]
        raise PlacementError(
            "%s: %s; to remove a volume on purpose keep its entry in jiva_volumes with "
            "'state: absent' (its data is kept; add 'delete_data: true' to delete it too), or run "
            "with -e jiva_remove_unlisted_volumes=true to stop every volume that is not listed "
            "(data kept)"
            % (
                "jiva_volumes lists no volume but volumes run" if listed_none
                else "volumes run that are not in jiva_volumes",
                "; ".join("volume %r on %s" % (n, ", ".join(sorted(h))) for n, h in sorted(stray.items())),
            )
        )
    # ports of volumes that are not listed but still exist somewhere stay taken
    reserved = set()  # type: set[int]
    keep_record = {}  # type: dict[str, dict]
    for name in sorted(set(stray) | set(recorded_ports)):
        if name in set(v["name"] for v in all_vols):
            continue
        if name in stray or down:
            rec = dict(recorded_ports.get(name) or {})
            rec.update(dict((k, v) for k, v in (running.get(name) or {}).items() if k != "portal_host"))
            rec["state"] = "absent"
            keep_record[name] = rec
            reserved.update(p for k, p in rec.items() if k in ("replica_port", "api_port"))
    assign_ports(all_vols, recorded_ports, running, replica_port_base, api_port_base, reserved)
    _check_ports([v for v in all_vols if v["replica_port"] is not None or v["api_port"] is not None],
                 nodes_by_name)
    _check_metrics_ports([v for v in all_vols if v["replica_port"] is not None], nodes_by_name,
                         metrics_port_base, replica_port_base)
    vols = [v for v in all_vols if v["state"] == "present"]
    removed = []
    for v in all_vols:
        if v["state"] == "absent":
            removed.append({"name": v["name"], "index": v["index"], "listed": True,
                            "portal_host": v["portal_host"], "replica_port": v["replica_port"],
                            "api_port": v["api_port"], "delete_data": v["delete_data"]})
    if unlisted == "remove":
        for name in sorted(stray):
            run = running.get(name) or {}
            removed.append({"name": name, "index": None, "listed": False,
                            "portal_host": run.get("portal_host"),
                            "replica_port": keep_record[name].get("replica_port"),
                            "api_port": keep_record[name].get("api_port"), "delete_data": False})
    ports = dict(keep_record)
    for v in all_vols:
        if v["replica_port"] is None and v["api_port"] is None:
            continue
        ports[v["name"]] = {"replica_port": v["replica_port"], "api_port": v["api_port"]}
        if v["state"] == "absent":
            ports[v["name"]]["state"] = "absent"
    existing, unknown = _merge_down_layout(existing, layout, down)
    eligible = [n for n in nodes_by_name.values() if n["eligible"]]
    for vol in vols:
        where = "jiva_volumes[%d] (volume %r)" % (vol["index"], vol["name"])
        for pin in vol["pinned"]:
            if pin not in nodes_by_name:
                raise PlacementError(
                    "%s.nodes names unknown host %r (not in group 'jiva_nodes')" % (where, pin)
                )
            if not nodes_by_name[pin]["eligible"]:
                raise PlacementError(
                    "%s.nodes pins host %r, which is marked jiva_eligible=false" % (where, pin)
                )
        if vol["replicas"] > len(eligible):
            raise PlacementError(
                "%s asks for %d replicas but only %d eligible nodes exist (%s): one replica per node"
                % (
                    where,
                    vol["replicas"],
                    len(eligible),
                    ", ".join(n["name"] for n in eligible) or "none",
                )
            )
        if vol["want_witness"] and len(eligible) <= vol["replicas"]:
            raise PlacementError(
                "%s.witness is true but no eligible host is left for the witness: it needs a "
                "third eligible host that holds no replica of the volume (eligible: %s); add a "
                "host or set witness: false"
                % (where, ", ".join(n["name"] for n in eligible) or "none")
            )
        ctl = vol["pinned_controller"]
        if ctl is not None:
            if ctl not in nodes_by_name:
                raise PlacementError(
                    "%s.controller names unknown host %r (not in group 'jiva_nodes')" % (where, ctl)
                )
            if not nodes_by_name[ctl]["eligible"]:
                raise PlacementError(
                    "%s.controller pins host %r, which is marked jiva_eligible=false" % (where, ctl)
                )
    for vol in vols:
        name = vol["name"]
        chosen = list(vol["pinned"])
        before = existing.get(name) or {}
        wanted = wants_witness(vol)
        old_witness = _eligible_first(before.get("witness"), before.get("witnesses"), nodes_by_name)
        old_witness = old_witness if wanted else None
        # a new part goes to a reachable host first; but when a down host may already hold a part
        # nobody can see (no layout record), that host first
        down_first = name in unknown

        def pref(n, down_first=down_first):
            return (n in down) if down_first else (n not in down)

        kept = [
            n
            for n in before.get("replicas", [])
            if n in nodes_by_name and nodes_by_name[n]["eligible"] and n not in chosen
        ]
        kept.sort(key=lambda n: hrw_score(name, n), reverse=True)
        kept = kept[: max(0, vol["replicas"] - len(chosen))]
        if down_first:
            # the down hosts may hold the replicas nobody can see: count them as kept
            maybe = [n for n in sorted(down) if n in nodes_by_name and nodes_by_name[n]["eligible"]
                     and n not in chosen and n not in kept]
            maybe.sort(key=lambda n: hrw_score(name, n), reverse=True)
            kept += maybe[: max(0, vol["replicas"] - len(chosen) - len(kept))]
            kept.sort(key=lambda n: hrw_score(name, n), reverse=True)
        chosen += kept
        # the host of an existing witness takes a new replica only when no other host can
        ranked = sorted(
            eligible,
            key=lambda n: (n["name"] != old_witness, pref(n["name"]), hrw_score(name, n["name"])),
            reverse=True,
        )
        for n in ranked:
            if len(chosen) >= vol["replicas"]:
                break
            if n["name"] not in chosen:
                chosen.append(n["name"])
        controller = vol["pinned_controller"]
        old_ctl = _eligible_first(before.get("controller"), before.get("controllers"), nodes_by_name)
        if controller is None and old_ctl in nodes_by_name and nodes_by_name[old_ctl]["eligible"]:
            controller = old_ctl
        if controller is None:
            controller = max(
                chosen,
                key=lambda n: (name in unknown or n not in down, hrw_score(name, n, "controller")),
            )
        moved = sorted(set(before.get("replicas", [])) - set(chosen))
        witness = None
        if wanted:
            free = [n["name"] for n in eligible if n["name"] not in chosen]
            if old_witness in free:
                witness = old_witness
            elif free:
                witness = max(
                    free,
                    key=lambda n: (n not in moved, pref(n), n != controller,
                                   hrw_score(name, n, "witness")),
                )
        vol["replica_nodes"] = chosen
        vol["replica_addresses"] = [
            join_hostport(nodes_by_name[n]["address"], vol["replica_port"]) for n in chosen
        ]
        vol["controller"] = controller
        vol["witness"] = witness
        vol["witness_address"] = (
            join_hostport(nodes_by_name[witness]["address"], vol["replica_port"])
            if witness
            else None
        )
        vol["moved"] = moved
        mport = vol.get("metrics_port")
        vol["replica_metrics"] = (
            [join_hostport(nodes_by_name[n]["address"], mport) for n in chosen] if mport else []
        )
        vol["witness_metrics"] = (
            join_hostport(nodes_by_name[witness]["address"], mport) if mport and witness else None
        )
    return {"volumes": vols, "removed": removed, "ports": ports, "unlisted": stray}


def layout_record(vols):
    """The HA state file's layout entries ({controller, replicas, witness, api}, as failover.yml
    writes them) of placed volumes."""
    return dict(
        (v["name"], {"controller": v["controller"], "replicas": list(v["replica_nodes"]),
                     "witness": v.get("witness"), "api": v.get("api")})
        for v in vols
    )


def placement_warnings(vols):
    """Messages about placed volumes that are valid but fragile: a 2-replica volume under quorum
    majority without a witness holds its I/O when either replica's host is lost."""
    out = []
    for vol in vols:
        if vol["replicas"] == 2 and vol["quorum"] == "majority" and not vol.get("witness"):
            out.append(
                "jiva_volumes[%d] (volume %r) has 2 replicas and no witness (%s): under quorum "
                "majority it holds its I/O while either replica's host is down; add an eligible "
                "host for a witness, use 3 replicas, or set quorum: off"
                % (
                    vol["index"],
                    vol["name"],
                    "witness: false" if vol.get("want_witness") is False else "no third eligible host",
                )
            )
    return out


def parse_existing_services(existing_services, existing=None):
    """Add to `existing` (volume -> {replicas, controller, witness}) what the service files found
    on the hosts say: {host: [file names]} of KIND-VOLUME.env files (as site.yml collects them)."""
    existing = dict((k, dict(v)) for k, v in (existing or {}).items())
    for host, names in sorted((existing_services or {}).items()):
        for fname in names or []:
            base = fname[:-4] if fname.endswith(".env") else fname
            kind, _sep, vol = base.partition("-")
            if not vol:
                continue
            entry = existing.setdefault(vol, {"replicas": [], "controller": None})
            if kind == "replica" and host not in entry.setdefault("replicas", []):
                entry["replicas"].append(host)
            elif kind == "controller":
                if entry.get("controller") not in (None, host):
                    # (more than one: `controllers` lists them all; the layout record decides;
                    # a drained host that came back has one too)
                    entry["controllers"] = sorted(set(entry.get("controllers", []) + [entry["controller"], host]))
                entry["controller"] = host
            elif kind == "witness":
                if entry.get("witness") not in (None, host):
                    entry["witnesses"] = entry.get("witnesses", [entry["witness"]]) + [host]
                if entry.get("witness") is None or hrw_score(vol, host, "witness") > hrw_score(
                    vol, entry["witness"], "witness"
                ):
                    # (two hosts with a witness of one volume: keep the one placement would choose)
                    entry["witness"] = host
    return existing
