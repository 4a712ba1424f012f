# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Health and failover logic for jiva volumes: host probes, the health view, the failover plan.

Pure functions plus small standard-library probes (TCP connect, GET /v1/volume), shared by the
volume_health and failover_plan modules and the unit tests. No Ansible imports.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket
import threading
import time

from ansible_collections.jiva.storage.plugins.module_utils.jiva_api import ApiError, get_json
from ansible_collections.jiva.storage.plugins.module_utils.jiva_placement import hrw_score

UNREACHABLE = "unreachable"
NO_QUORUM = "no quorum"


def tcp_probe(host, port, timeout):
    """Return None when a TCP connection to HOST:PORT opens within `timeout` s, else the reason."""
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except (socket.timeout, OSError) as exc:
        return str(exc) or exc.__class__.__name__
    sock.close()
    return None


def parallel(calls):
    """Run the zero-argument callables at once in threads; return their results in order."""
    results = [None] * len(calls)

    def run(i, fn):
        results[i] = fn()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def probe_hosts(nodes, timeout=1.0, attempts=2, pause=0.2):
    """{name: None | reason}: a host is unreachable when its SSH port fails `attempts` times.

    Each node is {name, address, ssh_host, ssh_port}; ssh_host defaults to address. Hosts are
    probed in parallel; only those that fail are retried, so a healthy cluster costs one round.
    """
    result = {}
    pending = list(nodes)
    for attempt in range(max(1, attempts)):
        whys = parallel([
            (lambda n=node: tcp_probe(n.get("ssh_host") or n["address"], n.get("ssh_port") or 22, timeout))
            for node in pending
        ])
        failed = []
        for node, why in zip(pending, whys):
            result[node["name"]] = why
            if why is not None:
                failed.append(node)
        pending = failed
        if not pending:
            break
        if attempt + 1 < attempts:
            time.sleep(pause)
    return result


def read_volume(api, token=None, timeout=2.0, ca=None):
    """(status document, None) from GET /v1/volume (HTTPS with a CA bundle `ca`), or (None, reason)."""
    try:
        return get_json(api, "/v1/volume", token=token, timeout=timeout, ca=ca), None
    except ApiError as exc:
        return None, str(exc)


def _host_of(address, by_address):
    host = address.rsplit(":", 1)[0].strip("[]")
    return by_address.get(host, host)


def _witness_rows(vol, doc, hosts_down, by_address):
    """The volume's witnesses as health entries {host, address, state, id, epoch, last_error}.

    When the controller answers with a `witnesses` list, that list is the truth (a placed witness
    it does not list is shown as `missing`); otherwise the placed witness, `unreachable` when its
    host is down, else `unknown`."""
    out = []
    if doc is not None and isinstance(doc.get("witnesses"), list):
        for w in doc["witnesses"]:
            host = _host_of(w.get("address", ""), by_address)
            state = w.get("state") or "?"
            if host in hosts_down and state != "ok":
                state = UNREACHABLE
            out.append({"host": host, "address": w.get("address"), "state": state,
                        "id": w.get("id"), "epoch": w.get("epoch"), "last_error": w.get("last_error")})
        if out or not vol.get("witness"):
            return out
        state = "missing"
    elif vol.get("witness"):
        state = UNREACHABLE if vol["witness"] in hosts_down else "unknown"
    else:
        return out
    out.append({"host": vol["witness"], "address": vol.get("witness_address"), "state": state,
                "id": None, "epoch": None, "last_error": None})
    return out


def volume_health(vol, doc, api_error, hosts_down, node_address, controller_host):
    """One health row (a dict) for a volume from its status document and the host probes.

    `vol` is a placed volume (name, portal, api, replica_nodes, replica_addresses, witness,
    witness_address), `doc` the status JSON or None, `hosts_down` {host: reason} of unreachable
    hosts, `node_address` {host: address}, `controller_host` where the controller is believed to
    run. Degraded: a replica that is not RW, a witness that is not ok, the state `no quorum`, the
    controller's own degraded flag, or no answer at all.
    """
    by_address = dict((a, n) for n, a in node_address.items())
    replicas = []
    seen = set()
    if doc is not None:
        for r in doc.get("replicas") or []:
            host = _host_of(r.get("address", ""), by_address)
            seen.add(r.get("address"))
            mode = r.get("mode") or "?"
            if host in hosts_down and mode != "RW":
                mode = UNREACHABLE
            rb = r.get("rebuild") or None
            progress = None
            if rb and rb.get("total"):
                progress = int(100 * int(rb.get("done") or 0) // int(rb["total"]))
            replicas.append({"host": host, "address": r.get("address"), "mode": mode, "id": r.get("id"),
                             "rebuild_percent": progress, "epoch": r.get("epoch"),
                             "last_error": r.get("last_error"), "last_rebuild": r.get("last_rebuild")})
    for host, addr in zip(vol.get("replica_nodes") or [], vol.get("replica_addresses") or []):
        if doc is not None or addr in seen:
            continue  # the controller's own list is the truth when it answers
        replicas.append({"host": host, "address": addr, "id": None,
                         "mode": UNREACHABLE if host in hosts_down else ("unknown" if doc is None else "missing"),
                         "rebuild_percent": None, "epoch": None, "last_error": None, "last_rebuild": None})
    witnesses = _witness_rows(vol, doc, hosts_down, by_address)
    if doc is None:
        state = UNREACHABLE
        degraded = True
    else:
        state = doc.get("state") or "?"
        degraded = (bool(doc.get("degraded")) or state == NO_QUORUM
                    or any(r["mode"] != "RW" for r in replicas)
                    or any(w["state"] != "ok" for w in witnesses)
                    or int(((doc.get("integrity") or {}).get("unrepaired_blocks")) or 0) > 0)
    return {
        "volume": vol["name"],
        "controller_host": controller_host,
        "controller_host_reachable": controller_host not in hosts_down,
        "portal": vol.get("portal"),
        "api": vol.get("api"),
        "state": state,
        "reason": (doc or {}).get("reason") or api_error or "",
        "epoch": (doc or {}).get("epoch"),
        "term": (doc or {}).get("term"),
        "view": (doc or {}).get("view"),
        "quorum": (doc or {}).get("quorum") or ({"policy": vol["quorum"]} if vol.get("quorum") else None),
        "replicas": replicas,
        "witnesses": witnesses,
        "degraded": degraded,
        "integrity": _integrity(doc),
    }


def _integrity(doc):
    """The checksum and scrub findings of a status document (None without one, or from a
    controller too old to report them): corrupt block copies found and repaired, blocks left
    unrepaired, and the last scrub (running, result, when it finished)."""
    if doc is None or not isinstance(doc.get("integrity"), dict):
        return None
    integ = doc["integrity"]
    scrub = doc.get("scrub") if isinstance(doc.get("scrub"), dict) else {}
    return {
        "checksum_errors": int(integ.get("checksum_errors") or 0),
        "blocks_repaired": int(integ.get("blocks_repaired") or 0),
        "unrepaired_blocks": int(integ.get("unrepaired_blocks") or 0),
        "scrub_running": bool(scrub.get("running")),
        "scrub_progress": scrub.get("progress"),
        "last_scrub_result": scrub.get("last_result"),
        "last_scrub_finished": scrub.get("last_finished"),
    }


def _scrub_cell(integ):
    """`result YYYY-MM-DD` of the last scrub, `running N%`, `never` or `-` (not reported)."""
    if not integ:
        return "-"
    if integ.get("scrub_running"):
        return "running %d%%" % int(100 * float(integ.get("scrub_progress") or 0))
    if not integ.get("last_scrub_result"):
        return "never"
    when = time.strftime("%Y-%m-%d", time.gmtime(integ.get("last_scrub_finished") or 0))
    return "%s %s" % (integ["last_scrub_result"], when)


def health_table_rows(rows):
    """Table rows (lists) for tabulate: one line per volume, replicas as host:MODE[ pct%],
    witnesses as host:STATE (`-` when the volume has none)."""
    out = []
    for h in rows:
        cells = []
        for r in h["replicas"]:
            cell = "%s:%s" % (r["host"], r["mode"])
            if r.get("rebuild_percent") is not None:
                cell += " %d%%" % r["rebuild_percent"]
            cells.append(cell)
        witness = ", ".join("%s:%s" % (w["host"], w["state"]) for w in h.get("witnesses") or []) or "-"
        ctl = h["controller_host"] or "?"
        if not h.get("controller_host_reachable", True):
            ctl += " (unreachable)"
        integ = h.get("integrity")
        corrupt = "%d/%d" % (integ["checksum_errors"], integ["blocks_repaired"]) if integ else "-"
        unrepaired = integ["unrepaired_blocks"] if integ else "-"
        out.append([h["volume"], ctl, h["portal"], h["state"], h["epoch"] if h["epoch"] is not None else "",
                    ", ".join(cells), witness, "yes" if h["degraded"] else "no",
                    corrupt, unrepaired, _scrub_cell(integ)])
    return out


HEALTH_HEADERS = ["volume", "controller", "portal", "state", "epoch", "replicas", "witness", "degraded",
                  "corrupt found/repaired", "unrepaired", "last scrub"]


def load_state_doc(path):
    """The whole HA state file as a dict ({} when there is none yet): `volumes` (where each
    volume's controller, replicas and witness run), `ports` (each volume's replica and API port),
    `drained` (hosts drain.yml emptied) and whatever other playbooks keep there (each play owns
    its keys and rewrites only those: save_state_doc). ValueError naming the file when it cannot be read
    or parsed."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            doc = json.load(f)
    except (IOError, OSError, ValueError) as exc:
        raise ValueError("cannot read the failover state file %s: %s" % (path, exc))
    if not isinstance(doc, dict):
        raise ValueError("cannot read the failover state file %s: not a JSON object" % path)
    return doc


def load_state(path):
    """The `volumes` of the failover state file ({} when there is none yet); ValueError naming
    the file when it cannot be read or parsed."""
    return load_state_doc(path).get("volumes") or {}


def save_state_doc(path, updates):
    """Set the top-level keys in `updates` in the HA state file, keeping every other key (written
    atomically: a temporary file renamed over it). Returns True when the content changed."""
    doc = load_state_doc(path)
    new = dict(doc)
    new.update(updates)
    if new == doc and os.path.exists(path):
        return False
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(new, f, indent=2, sort_keys=True)
        f.write("\n")
    os.rename(tmp, path)
    return True


def load_drained(path):
    """The hosts drain.yml has drained (the state file's `drained` list; [] without a file).
    Every play that places volumes treats them as ineligible."""
    drained = load_state_doc(path).get("drained") or []
    return sorted(str(h) for h in drained) if isinstance(drained, list) else []


def _claims(name, node_state, running):
    """{host: epoch} of the running controllers of `name` that answer as serving (not fenced),
    from each host's own view (node_state controller_status)."""
    out = {}
    for h in running:
        st = ((node_state.get(h) or {}).get("controller_status") or {}).get(name) or {}
        if st.get("state") == "serving" and isinstance(st.get("epoch"), int):
            out[h] = st["epoch"]
    return out


def _own_state(name, host_state):
    """The state the controller of `name` on a host reports to that host (None when unknown)."""
    return ((host_state.get("controller_status") or {}).get(name) or {}).get("state")


def current_layout(vol, node_state, ha_state, hosts_down, doc, node_address):
    """(controller host, replica hosts) where the volume really runs now.

    Controller: when reachable hosts run serving controllers of the volume, the one with the highest
    epoch (a stale controller that came back has a lower one); else the state file; else the one
    reachable host whose controller runs (or is configured); else the placement. Replicas: the
    controller's replica list (addresses mapped to hosts) when the API answered; else the state
    file; else the placement.
    """
    name = vol["name"]
    saved = (ha_state or {}).get(name) or {}
    by_address = dict((a, n) for n, a in node_address.items())
    ctl = saved.get("controller")
    running = [h for h, st in sorted(node_state.items())
               if h not in hosts_down and name in (st.get("controllers_running") or [])]
    configured = [h for h, st in sorted(node_state.items())
                  if h not in hosts_down and name in (st.get("controllers") or [])]
    claims = _claims(name, node_state, running)
    if claims and (len(claims) > 1 or ctl not in claims):
        # several live controllers (a stale one came back), or the recorded one is not serving:
        # the one that claimed the volume last (highest epoch) is the controller, whatever the
        # state file says (the run that moved it may have died before recording the move)
        ctl = max(claims, key=lambda h: (claims[h], h == ctl))
    elif ctl is None or (ctl not in hosts_down and ctl not in configured):
        if len(running) == 1:
            ctl = running[0]
        elif len(configured) == 1:
            ctl = configured[0]
        elif ctl is None:
            ctl = vol.get("controller")
    replicas = None
    if doc is not None and doc.get("replicas"):
        replicas = [_host_of(r["address"], by_address) for r in doc["replicas"]]
        replicas = [h for h in replicas if h in node_address]
    if not replicas:
        replicas = saved.get("replicas") or list(vol.get("replica_nodes") or [])
    return ctl, replicas


def current_witness(vol, node_state, ha_state, hosts_down, doc, node_address):
    """Host of the volume's witness now, or None.

    The controller's own list when it answers with one (even an empty one: the running controller
    has no witness, whatever an older record says); else the state file; else the one reachable
    host that has the witness configured; else the placement.
    """
    name = vol["name"]
    by_address = dict((a, n) for n, a in node_address.items())
    if doc is not None and isinstance(doc.get("witnesses"), list):
        hosts = [_host_of(w.get("address", ""), by_address) for w in doc["witnesses"]]
        hosts = [h for h in hosts if h in node_address]
        return hosts[0] if hosts else None
    saved = (ha_state or {}).get(name) or {}
    if "witness" in saved:
        return saved["witness"]
    configured = [h for h, st in sorted(node_state.items())
                  if h not in hosts_down and name in (st.get("witnesses") or [])]
    if len(configured) == 1:
        return configured[0]
    return vol.get("witness")


def new_controller_host(volume, live, old, replicas, witness):
    """Where a controller goes when its host `old` is lost: a live host with neither a replica nor
    the witness of the volume (the next host failure then takes one voter at most), else the
    witness's host (it holds no data), else a host with a replica (the quorum rule lets the new
    controller serve from a majority without the lost host's replica); None when no live host is
    left. Ties broken by rendezvous weight of `volume|host`."""
    others = set([old]) | set(replicas)
    return (pick_host(volume, live, others | (set([witness]) if witness else set()))
            or pick_host(volume, live, others)
            or pick_host(volume, live, set([old])))


def pick_host(volume, candidates, avoid, salt="controller"):
    """The candidate (not in `avoid`) with the highest rendezvous weight, preferring hosts not in
    `avoid`; None when there is none."""
    pool = [h for h in candidates if h not in avoid]
    if not pool:
        return None
    return max(pool, key=lambda h: hrw_score(volume, h, salt))


def _split_lost(node_state, hosts_down):
    """A host that passed the probe but did not answer the host check (it went away during the run:
    Ansible registers an unreachable/failed result without the facts) counts as down, not as a
    live host where nothing runs: no repair is planned on it. Returns (live facts, hosts down,
    the hosts lost during this run)."""
    ok, down, lost = {}, dict(hosts_down), set()
    for h, st in node_state.items():
        if not isinstance(st, dict) or st.get("unreachable") or st.get("failed") or "portals" not in st:
            msg = st.get("msg") if isinstance(st, dict) else None
            down[h] = "lost during this run: %s" % (msg or "no host facts")
            lost.add(h)
        else:
            ok[h] = st
    return ok, down, lost


def plan(volumes, nodes, node_state, hosts_down, docs, ha_state, relocate=False):
    """The failover plan: what was found and what to do, per volume, plus the new placement.

    volumes   placed volumes (jiva.storage.placement output)
    nodes     [{name, address, eligible}]
    node_state {host: {controllers: [vol], controllers_running: [vol], replicas: [vol],
               replicas_running: [vol], replica_data: [vol], witnesses: [vol],
               witnesses_running: [vol], witness_data: [vol], portals: [address]}} of reachable hosts
    hosts_down {host: reason} hosts whose SSH port did not answer
    docs      {volume: status document or None}
    ha_state  {volume: {controller, replicas, witness}} from the previous run
    relocate  move replicas whose host is unreachable to another eligible host (full rebuild)

    Returns {"volumes": [...placement with controller/replica_nodes/replica_addresses/witness/
    witness_address updated],
    "actions": [{host, action, volume, why}], "report": [{volume, found, did}], "state": {...}}.
    """
    node_state, hosts_down, lost = _split_lost(node_state, hosts_down)
    node_address = dict((n["name"], n["address"]) for n in nodes)
    by_address = dict((a, n) for n, a in node_address.items())
    eligible = [n["name"] for n in nodes if n.get("eligible", True)]
    live = [h for h in eligible if h not in hosts_down and h in node_state]
    actions = []
    report = []
    new_state = {}
    out_vols = []
    for vol in volumes:
        name = vol["name"]
        doc = docs.get(name)
        found, did = [], []
        ctl, replicas = current_layout(vol, node_state, ha_state, hosts_down, doc, node_address)
        witness = current_witness(vol, node_state, ha_state, hosts_down, doc, node_address)
        vol = dict(vol)
        # ---- controller -------------------------------------------------------------------
        if ctl in hosts_down:
            if doc is not None and doc.get("state") == "serving" and ctl not in lost:
                # (the API was read before a host lost during this run went away: not evidence)
                found.append("controller host %s: SSH unreachable but the volume's API answers" % ctl)
                did.append("nothing: the controller still serves (only the management path is down)")
            else:
                new = new_controller_host(name, live, ctl, replicas, witness)
                if new is None:
                    found.append("controller host %s unreachable" % ctl)
                    did.append("nothing: no other eligible live host to run the controller")
                else:
                    found.append("controller host %s unreachable (%s)" % (ctl, hosts_down[ctl]))
                    did.append("started the controller on %s, moved portal %s there; %s is fenced "
                               "(epoch bump, portal dropped when it returns)" % (new, vol.get("portal_host"), ctl))
                    actions.append({"host": new, "action": "start_controller", "volume": name,
                                    "why": "controller host %s unreachable" % ctl})
                    ctl = new
        elif ctl is not None:
            st = node_state.get(ctl) or {}
            if name not in (st.get("controllers_running") or []):
                found.append("controller on %s not running (host up)" % ctl)
                did.append("started the controller again on %s" % ctl)
                actions.append({"host": ctl, "action": "start_controller", "volume": name,
                                "why": "controller process dead, host up"})
            elif doc is None:
                found.append("controller on %s: supervisor up, API not answering" % ctl)
                did.append("nothing: the supervisor restarts it")
            elif doc.get("state") == "fenced" and _own_state(name, st) != "serving":
                # (the portal may answer from a stale host too: the host's own view comes first)
                # another controller claimed the volume (a stale one that came back): that one is
                # fenced below; this one must claim it again with a new epoch
                found.append("controller on %s is fenced: %s" % (ctl, doc.get("reason") or ""))
                did.append("restarted it on %s (it claims the volume with a new epoch)" % ctl)
                actions.append({"host": ctl, "action": "restart_controller", "volume": name,
                                "why": "fenced by a stale controller"})
        for h, st in sorted(node_state.items()):
            if h == ctl or h in hosts_down:
                continue
            stale = name in (st.get("controllers") or []) or name in (st.get("controllers_running") or [])
            portal = vol.get("portal_host") in (st.get("portals") or [])
            if stale or portal:
                found.append("stale controller%s on %s" % (" and portal address" if portal else "", h))
                did.append("stopped it and dropped the portal on %s" % h)
                actions.append({"host": h, "action": "fence_controller", "volume": name,
                                "why": "the controller of %s runs on %s" % (name, ctl)})
                if portal and ctl in node_state and ctl not in hosts_down:
                    # neighbours may have learnt the stale host's MAC for the portal: re-announce
                    actions.append({"host": ctl, "action": "announce_portal", "volume": name,
                                    "why": "portal address also seen on %s" % h})
        # ---- replicas ---------------------------------------------------------------------
        new_replicas = []  # type: list[dict]
        for h in replicas:
            if h in hosts_down:
                why_not = ""
                if relocate:
                    # never onto the witness's host: it would hold two voters of the volume (and
                    # the witness would have to move, restarting the controller)
                    avoid = set(replicas) | set(new_replicas) | (set([witness]) if witness else set())
                    target = pick_host(name, live, avoid, "replica")
                    if target is not None:
                        found.append("replica host %s unreachable" % h)
                        did.append("relocated the replica to %s (full rebuild)" % target)
                        actions.append({"host": target, "action": "start_replica", "volume": name,
                                        "why": "relocated from unreachable %s" % h, "replaces": h})
                        new_replicas.append(target)
                        continue
                    why_not = " (no live eligible host without a replica or the witness of %s)" % name
                found.append("replica host %s unreachable" % h)
                did.append("nothing: the replica stays with its disk; it catches up when %s returns%s"
                           % (h, why_not))
                new_replicas.append(h)
                continue
            st = node_state.get(h)
            if st is None:
                new_replicas.append(h)
                continue
            if name not in (st.get("replicas_running") or []):
                gone = name not in (st.get("replica_data") or [])
                found.append("replica on %s not running%s (host up)" % (h, ", its data is gone" if gone else ""))
                did.append("started it again on %s (%s)" % (h, "full rebuild" if gone else "catches up on what it missed"))
                actions.append({"host": h, "action": "start_replica", "volume": name,
                                "why": "replica process dead, host up"})
            new_replicas.append(h)
        # ---- witness ----------------------------------------------------------------------
        wrow = next((w for w in (doc or {}).get("witnesses") or []
                     if _host_of(w.get("address", ""), by_address) == witness), None)
        if witness is None:
            pass
        elif witness in hosts_down:
            found.append("witness host %s unreachable" % witness)
            did.append("nothing: the replicas are a majority without it; the witness rejoins when %s "
                       "returns" % witness)
        elif witness in node_state:
            st = node_state[witness]
            if name not in (st.get("witnesses_running") or []):
                gone = name not in (st.get("witness_data") or [])
                found.append("witness on %s not running%s (host up)"
                             % (witness, ", its metadata is gone" if gone else ""))
                did.append("started it again on %s" % witness)
                actions.append({"host": witness, "action": "start_witness", "volume": name,
                                "why": "witness process dead, host up"})
            elif wrow is not None and wrow.get("state") not in (None, "ok"):
                found.append("witness on %s runs but the controller cannot reach it (%s)"
                             % (witness, wrow.get("last_error") or wrow.get("state")))
                did.append("nothing: the controller keeps retrying")
        if doc is not None and doc.get("state") == NO_QUORUM:
            missing = ((doc.get("quorum") or {}).get("missing")) or []
            found.append("no quorum%s" % (": missing %s" % ", ".join(missing) if missing else ""))
            did.append("I/O is held until a majority of the voters answers")
        port = vol.get("replica_port")
        vol["controller"] = ctl
        vol["replica_nodes"] = new_replicas
        vol["witness"] = witness
        if port is not None:
            vol["replica_addresses"] = ["%s:%s" % (node_address[h], port) for h in new_replicas]
            vol["witness_address"] = "%s:%s" % (node_address[witness], port) if witness in node_address else None
        out_vols.append(vol)
        if not found:
            found.append("healthy" if doc is not None and not doc.get("degraded") else
                         "degraded: %s" % ((doc or {}).get("reason") or "replicas rebuilding"))
            did.append("nothing")
        report.append({"volume": name, "controller": ctl, "found": found, "did": did})
        new_state[name] = {"controller": ctl, "replicas": new_replicas, "witness": witness,
                           "api": vol.get("api")}
    hosts = sorted(set(a["host"] for a in actions))
    return {"volumes": out_vols, "actions": actions, "report": report, "state": new_state, "act_on": hosts}
