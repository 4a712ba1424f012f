# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The drain plan behind jiva.storage.drain_plan (module and action plugin alike): what moves off
a host, where to, in which order, and the refusals that come before anything is touched.

Pure function `drain_plan` plus `make_drain`, which reads and writes the HA state file (the
`drained` list). No Ansible imports.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.jiva.storage.plugins.module_utils.jiva_ha import (
    current_layout,
    current_witness,
    new_controller_host,
    load_state_doc,
    save_state_doc,
)
from ansible_collections.jiva.storage.plugins.module_utils.jiva_placement import (
    PlacementError,
    join_hostport,
    place,
)

try:
    from tabulate import tabulate
except ImportError:  # pragma: no cover - plain fallback
    tabulate = None

ARGUMENT_SPEC = dict(
    host=dict(type="str", required=True),
    undrain=dict(type="bool", default=False),
    volumes=dict(type="list", elements="raw"),
    nodes=dict(type="list", elements="dict", required=True),
    replica_port_base=dict(type="int", default=9700),
    api_port_base=dict(type="int", default=9800),
    node_state=dict(type="dict", default={}),
    hosts_down=dict(type="dict", default={}),
    docs=dict(type="dict", default={}),
    state_file=dict(type="path", required=True),
)


class DrainRefused(Exception):
    """The drain is refused before anything is touched (the message says why and what to do)."""


def _public(vol):
    vol = dict(vol)
    vol.pop("chap_secret", None)
    vol.pop("want_witness", None)
    return vol


def _with_layout(vol, replicas, witness, controller, address):
    """`vol` with its replica hosts/addresses, witness and controller set (the volume's port)."""
    port = vol["replica_port"]
    out = dict(vol)
    out["replica_nodes"] = list(replicas)
    out["replica_addresses"] = [join_hostport(address[h], port) for h in replicas]
    out["witness"] = witness
    out["witness_address"] = join_hostport(address[witness], port) if witness else None
    out["controller"] = controller
    return out


def drain_plan(host, volumes, nodes, node_state, hosts_down, docs, ha_state, drained=(),
               replica_port_base=9700, api_port_base=9800):
    """Plan the evacuation of `host`: for every volume with a replica, the witness or the
    controller there, the target hosts and the steps. Raises DrainRefused (nothing touched yet):
    unknown host; a volume that would have fewer eligible hosts than replicas; a volume degraded
    other than on `host`; a volume pinned to `host`; no host for a new replica but the witness's.

    volumes   the raw `jiva_volumes`; nodes [{name, address, eligible}]
    node_state {host: jiva.storage.node_state result} of the reachable hosts
    hosts_down {host: reason}; docs {volume: GET /v1/volume or None}
    ha_state  the state file's `volumes`; drained the hosts drained before

    Returns {"volumes": [per affected volume: name, interim (the volume as its controller is
    (re)started: today's replicas, the new witness), final (where everything is at the end),
    controller_from/to, move_controller, restart_controller, new_replicas and
    removed_replicas [{host, address}], witness_from/to, moves (text)], "final": every volume's final
    placement, "actions": [{host, action, volume}], "node_live", "drained", "report"}.
    """
    names = [n["name"] for n in nodes]
    if host not in names:
        raise DrainRefused("unknown host %r: it is not in the inventory group 'jiva_nodes' (hosts: %s)"
                           % (host, ", ".join(names)))
    drained = sorted(set(drained) | set([host]))
    address = dict((n["name"], n["address"]) for n in nodes)
    nodes_after = [dict(name=n["name"], address=n["address"],
                        eligible=bool(n.get("eligible", True)) and n["name"] not in drained) for n in nodes]
    eligible_after = [n["name"] for n in nodes_after if n["eligible"]]
    node_live = host not in hosts_down and host in node_state
    for index, raw in enumerate(volumes or []):
        if not isinstance(raw, dict):
            continue
        want = raw.get("replicas", 3)
        if isinstance(want, int) and not isinstance(want, bool) and want > len(eligible_after):
            raise DrainRefused(
                "volume %r needs %d replicas but only %d eligible nodes would remain (%s): add a node first"
                % (raw.get("name"), want, len(eligible_after), ", ".join(eligible_after) or "none"))
        pins = list(raw.get("nodes") or []) + ([raw["controller"]] if raw.get("controller") else [])
        if host in pins:
            raise DrainRefused(
                "volume %r is pinned to %s (jiva_volumes[%d]: nodes/controller): remove the pin first"
                % (raw.get("name"), host, index))
    try:
        placed = place(nodes_after, volumes, None, replica_port_base, api_port_base)
    except PlacementError as exc:
        raise DrainRefused("invalid jiva inventory: %s" % exc)
    live = [h for h in eligible_after if h not in hosts_down and h in node_state]
    # where the inventory put things before this drain: the last resort for where they run
    nodes_before = [dict(n, eligible=n["eligible"] or n["name"] == host) for n in nodes_after]
    before = dict((v["name"], v) for v in place(nodes_before, volumes, None, replica_port_base, api_port_base))
    existing, layouts = {}, {}
    for vol in placed:
        name = vol["name"]
        doc = docs.get(name)
        ctl, replicas = current_layout(before[name], node_state, ha_state, hosts_down, doc, address)
        if doc is None and not (ha_state or {}).get(name, {}).get("replicas"):
            # no API, no record: the replicas configured on the reachable hosts, plus the
            # unreachable hosts where the inventory put one
            replicas = [h for h in names if name in ((node_state.get(h) or {}).get("replicas") or [])
                        or (h in hosts_down and h in before[name]["replica_nodes"])]
        witness = current_witness(before[name], node_state, ha_state, hosts_down, doc, address)
        layouts[name] = (ctl, replicas, witness, doc)
        existing[name] = {"replicas": replicas, "controller": ctl, "witness": witness}
    final = dict((v["name"], v) for v in place(nodes_after, volumes, existing, replica_port_base, api_port_base))
    out, actions, report = [], [], []
    for vol in placed:
        name = vol["name"]
        ctl, replicas, witness, doc = layouts[name]
        fin = final[name]
        if host not in replicas and witness != host and ctl != host:
            continue
        # ---- refusals: only what is on `host` may be missing or degraded --------------------
        kept = [h for h in replicas if h != host]
        if len(kept) > vol["replicas"]:
            raise DrainRefused("volume %r runs %d replicas (%s) but the inventory says %d: run site.yml first"
                               % (name, len(replicas), ", ".join(replicas), vol["replicas"]))
        for h in replicas + ([witness] if witness else []):
            if h != host and h in hosts_down:
                raise DrainRefused("volume %r is degraded: %s (which holds its %s) is unreachable too"
                                   % (name, h, "witness" if h == witness else "replica"))
        if doc is not None:
            if doc.get("state") != "serving":
                why = (name, ctl, doc.get("state"), doc.get("reason") or "")
                raise DrainRefused("volume %r is degraded: its controller on %s says %r (%s): repair it first "
                                   "(failover.yml, health.yml), then drain" % why)
            for r in doc.get("replicas") or []:
                rhost = next((h for h, a in address.items() if r.get("address", "").startswith(a + ":")), None)
                if rhost != host and r.get("mode") != "RW":
                    raise DrainRefused("volume %r is degraded: its replica %s (%s) is %s: wait until it is RW "
                                       "(health.yml), then drain" % (name, r.get("address"), rhost, r.get("mode")))
            for w in doc.get("witnesses") or []:
                whost = next((h for h, a in address.items() if w.get("address", "").startswith(a + ":")), None)
                if whost != host and w.get("state") != "ok":
                    raise DrainRefused("volume %r is degraded: its witness %s is %s: repair it first"
                                       % (name, w.get("address"), w.get("state")))
        elif ctl != host:
            raise DrainRefused("volume %r is degraded: its controller on %s does not answer: repair it first "
                               "(failover.yml)" % (name, ctl))
        else:
            for h in replicas:
                if h != host and name not in ((node_state.get(h) or {}).get("replicas_running") or []):
                    raise DrainRefused("volume %r is degraded: its replica on %s is not running" % (name, h))
        # ---- targets ---------------------------------------------------------------------------
        new = [h for h in fin["replica_nodes"] if h not in replicas]
        if sorted(kept + new) != sorted(fin["replica_nodes"]):
            raise DrainRefused("volume %r: the inventory and the running volume differ (replicas on %s, "
                               "inventory places them on %s): run site.yml first"
                               % (name, ", ".join(replicas), ", ".join(fin["replica_nodes"])))
        for h in new:
            if h == witness:
                raise DrainRefused("volume %r: the only eligible host left for its new replica is %s, which "
                                   "holds its witness: add a node first" % (name, h))
            if h not in live:
                raise DrainRefused("volume %r: the new replica's host %s is not reachable" % (name, h))
        new_witness = fin["witness"]
        if witness and witness != host:
            new_witness = witness  # a witness not on `host` stays where it is
        elif witness == host and not new_witness:
            raise DrainRefused("volume %r: no eligible host without one of its replicas is left for its "
                               "witness (now on %s): add a node first" % (name, host))
        if new_witness and new_witness != witness and new_witness not in live:
            raise DrainRefused("volume %r: the new witness host %s is not reachable" % (name, new_witness))
        new_ctl = ctl
        if ctl == host or ctl not in eligible_after:
            # hosts that run jiva services (they have the engine) first: a host without any
            # gets the engine installed before its controller can start, which would lengthen
            # the I/O pause (after an unreachable host: the whole outage) by that install
            ready = [h for h in live if (node_state.get(h) or {}).get("revision")]
            new_ctl = (new_controller_host(name, ready, host, fin["replica_nodes"], new_witness)
                       or new_controller_host(name, live, host, fin["replica_nodes"], new_witness))
            if new_ctl is None:
                raise DrainRefused("volume %r: no reachable eligible host is left for its controller" % name)
        removed = [h for h in replicas if h == host]  # (after a resumed drain: none new, one to remove)
        interim = _with_layout(_public(vol), replicas, new_witness, new_ctl, address)
        existing[name] = {"replicas": fin["replica_nodes"], "controller": new_ctl, "witness": new_witness}
        moves = []
        for t in new:
            moves.append("new replica on %s (added as WO, rebuilt in full, then RW)" % t)
            actions.append({"host": t, "action": "start_replica", "volume": name})
        for old in removed:
            moves.append("replica on %s removed once the new one is RW%s"
                         % (old, " (stopped there, its data kept)" if node_live else ""))
        if new_witness != witness:
            moves.append("witness %s -> %s" % (witness, new_witness))
            actions.append({"host": new_witness, "action": "start_witness", "volume": name})
        move_controller = new_ctl != ctl
        restart_controller = not move_controller and new_witness != witness
        if move_controller:
            moves.append("controller %s -> %s (portal %s follows)" % (ctl, new_ctl, vol["portal_host"]))
            actions.append({"host": new_ctl, "action": "start_controller", "volume": name})
            if ctl == host and node_live:
                actions.append({"host": host, "action": "stop_controller", "volume": name})
        elif restart_controller:
            moves.append("controller on %s restarted with the new witness" % ctl)
            actions.append({"host": ctl, "action": "start_controller", "volume": name})
        actions.append({"host": new_ctl, "action": "write_controller", "volume": name})
        out.append({
            "name": name,
            "api": vol["api"],
            "interim": interim,
            "controller_from": ctl,
            "controller_to": new_ctl,
            "move_controller": move_controller,
            "restart_controller": restart_controller,
            "new_replicas": [{"host": t, "address": join_hostport(address[t], vol["replica_port"])} for t in new],
            "removed_replicas": [{"host": h, "address": join_hostport(address[h], vol["replica_port"])}
                                 for h in removed],
            "witness_from": witness,
            "witness_to": new_witness,
            "moves": moves,
        })
        report.append([name, "; ".join(moves)])
    if not out:
        report.append(["-", "nothing of any volume runs on %s" % host])
    # The end state exactly as site.yml will place it from the services it then finds (the
    # replica order is the controller's --replica order: any other order would restart it)
    final = dict((v["name"], v) for v in place(nodes_after, volumes, existing, replica_port_base, api_port_base))
    for entry in out:
        fin = final[entry["name"]]
        want = existing[entry["name"]]
        if sorted(fin["replica_nodes"]) != sorted(want["replicas"]) or fin["witness"] != want["witness"]:
            raise DrainRefused("volume %r: placement does not settle on the drained layout (%s): a bug, "
                               "please report it" % (entry["name"], fin["replica_nodes"]))
        fin["controller"] = want["controller"]
        entry["final"] = _public(fin)
    revisions = [str(st["revision"]) for st in node_state.values() if isinstance(st, dict) and st.get("revision")]
    return {
        # the engine revision the cluster's services were configured with (the most common one):
        # the configs of what starts elsewhere get the same (site.yml would restart them else)
        "revision": max(sorted(set(revisions)), key=revisions.count) if revisions else "",
        "volumes": out,
        "final": [_public(final[v["name"]]) for v in placed],
        "actions": actions,
        "act_on": sorted(set(a["host"] for a in actions)),
        "node_live": node_live,
        "drained": drained,
        "report": report,
    }


def make_drain(p, check_mode):
    """The module's result for validated params `p`: undrain (take the host off the `drained`
    list) or plan the drain and record the host as drained (before anything moves, so a failed
    drain is resumed by running it again and no play places anything there meanwhile)."""
    path = p["state_file"]
    try:
        doc = load_state_doc(path)
    except ValueError as exc:
        raise DrainRefused(str(exc))
    before = sorted(doc.get("drained") or [])
    names = [n["name"] for n in p["nodes"]]
    if p["undrain"]:
        if p["host"] not in names and p["host"] not in before:
            raise DrainRefused("unknown host %r: it is neither in the inventory group 'jiva_nodes' (%s) nor "
                               "drained (%s)" % (p["host"], ", ".join(names), ", ".join(before) or "none"))
        after = [h for h in before if h != p["host"]]
        result = {"volumes": [], "final": [], "actions": [], "act_on": [], "drained": after, "revision": "",
                  "report": [[p["host"], "eligible again (nothing moves back; new placements may use it)"]],
                  "node_live": False}  # type: dict
    else:
        try:
            result = drain_plan(p["host"], p["volumes"], p["nodes"], p["node_state"], p["hosts_down"],
                                p["docs"], doc.get("volumes") or {}, before,
                                p["replica_port_base"], p["api_port_base"])
        except PlacementError as exc:
            raise DrainRefused("invalid jiva inventory: %s" % exc)
        after = result["drained"]
    result["changed"] = after != before
    if result["changed"] and not check_mode:
        save_state_doc(path, {"drained": after})
    rows = result["report"]
    if tabulate is not None:
        result["report_table"] = tabulate(rows, headers=["volume", "moves off %s" % p["host"]])
    else:  # pragma: no cover
        result["report_table"] = "\n".join(" | ".join(r) for r in rows)
    return result
