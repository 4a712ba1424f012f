"""playbooks/monitoring.yml on a local-style inventory (control node only, nothing deployed): the
scrape config lists every controller API and every replica and witness metrics endpoint of the
placement, the alert rules pass `promtool check rules` (when a promtool can be had: on PATH or
unpacked by scripts/promtool.sh, else every rule expression is parsed for metric names) and
name only metrics the engine exports, and the Grafana dashboard is JSON naming only those too."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.sandbox import ROOT, local_inventory, run_playbook

# the metric families the engine exports: the controller's API, the replicas' and witnesses'
# --metrics (read from the code, so a renamed metric fails here), plus Prometheus' own `up`
ENGINE = [
    "jiva_engine/api/server.py",
    "jiva_engine/replica/server.py",
    "jiva_engine/witness/server.py",
]
EXPORTED = {"up"} | {
    m for f in ENGINE for m in re.findall(r'"(jiva_[a-z_]+)"', (ROOT / f).read_text())
}
PROMQL_WORDS = {
    "rate",
    "increase",
    "changes",
    "and",
    "or",
    "unless",
    "by",
    "on",
    "delta",
    "humanizeDuration",
    "sum",
    "avg",
    "max",
    "min",
    "job",
    "volume",
    "replica",
    "mode",
    "state",
    "node",
    "witness",
}


def metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that are not functions, keywords, labels or durations."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    return {w for w in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", expr) if w not in PROMQL_WORDS}


def promtool() -> str | None:
    p = subprocess.run(
        [str(ROOT / "scripts" / "promtool.sh")], capture_output=True, text=True, timeout=300
    )
    return p.stdout.strip() if p.returncode == 0 else None


def test_monitoring_files_cover_every_endpoint_and_name_real_metrics(tmp_path):
    volumes = [
        {"name": "mon3", "size": "16M", "replicas": 3, "portal": "127.0.0.81:3260"},
        {"name": "mon2", "size": "16M", "replicas": 2, "portal": "127.0.0.82:3260"},
    ]
    inv = local_inventory(tmp_path, ["127.0.0.71", "127.0.0.72", "127.0.0.73"], volumes)
    out = tmp_path / "mon"
    state = tmp_path / "state.json"
    run = run_playbook(
        "monitoring.yml", ROOT / "ansible.cfg", tmp_path / "ansible-home",
        "-e", f"jiva_monitoring_dir={out}", "-e", f"jiva_ha_state_file={state}",
        "-e", "jiva_alert_rebuild_stuck_minutes=7", inventory=inv, timeout=180,
    )  # fmt: skip
    assert run.rc == 0, run.output
    assert not (tmp_path / "nodes").exists()  # nothing on the storage hosts

    conf = yaml.safe_load((out / "prometheus.yml").read_text())
    assert conf["rule_files"] == ["jiva-alerts.yml"]
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    assert set(jobs) == {"jiva-controller", "jiva-replica", "jiva-witness"}
    targets = {
        job: sorted(
            (t, sc["labels"]["volume"]) for sc in j["static_configs"] for t in sc["targets"]
        )
        for job, j in jobs.items()
    }
    # the API ports 9800/9801, the metrics ports 9900/9901 (replica port + 200) on every replica
    # host, and the 2-replica volume's witness on the third host
    assert targets["jiva-controller"] == [("127.0.0.81:9800", "mon3"), ("127.0.0.82:9801", "mon2")]
    mon3 = [t for t, v in targets["jiva-replica"] if v == "mon3"]
    assert mon3 == [f"127.0.0.7{i}:9900" for i in (1, 2, 3)]
    mon2 = [t for t, v in targets["jiva-replica"] if v == "mon2"]
    (witness,) = [t for t, _ in targets["jiva-witness"]]
    assert len(mon2) == 2 and all(t.endswith(":9901") for t in mon2)
    assert witness.endswith(":9901") and witness not in mon2
    assert all(j["metrics_path"] == "/metrics" for j in jobs.values())

    rules = yaml.safe_load((out / "jiva-alerts.yml").read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    for wanted in ("JivaVolumeDegraded", "JivaVolumeNoQuorum", "JivaRebuildStuck",
                   "JivaReplicaEjected", "JivaWriteLatencyHigh", "JivaReadLatencyHigh"):  # fmt: skip
        assert wanted in by_name, wanted
    assert (
        "[7m]" in by_name["JivaRebuildStuck"]["expr"] and by_name["JivaRebuildStuck"]["for"] == "7m"
    )
    for name, rule in by_name.items():
        unknown = metric_names(rule["expr"]) - EXPORTED
        assert not unknown, f"{name}: {rule['expr']!r} names {unknown}, which nothing exports"

    dash = json.loads((out / "jiva-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for e in exprs:
        unknown = metric_names(e.replace("$__rate_interval", "1m")) - EXPORTED
        assert not unknown, f"dashboard: {e!r} names {unknown}, which nothing exports"
    # the dashboard shows the replica-side metrics too
    assert any("jiva_replica_dirty_regions" in e for e in exprs)

    tool = promtool()
    if tool is None:
        pytest.skip(
            "no promtool (apt-get download prometheus failed); the rules were parsed instead"
        )
    check = subprocess.run([tool, "check", "rules", str(out / "jiva-alerts.yml")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(by_name)} rules found" in check.stdout, check.stdout
    check = subprocess.run([tool, "check", "config", str(out / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_metric_names_of_an_expression():
    assert metric_names('rate(jiva_volume_writes_total{volume="a"}[5m]) > 0.1') == {
        "jiva_volume_writes_total"
    }
    assert {"jiva_replica_rebuild_done_bytes", "jiva_replica_up"} <= EXPORTED
    assert Path(ROOT / "playbooks" / "monitoring.yml").exists()
