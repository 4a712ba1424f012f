"""playbooks/tasks/secrets.yml on the control node alone (no host is contacted): a fresh cluster
gets a random replica secret and API token, once, in 0600 files under the inventory's folder,
reused by every later run and set on every host as if the inventory gave them; inventory values
win; a cluster that already runs without them gets none; nothing is printed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.sandbox import COLLECTION, ROOT, run_playbook

PLAY = """
- name: Secrets
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Secrets
      ansible.builtin.import_tasks: {tasks}
      vars:
        jiva_secrets_generate: "{{{{ generate | default(false) }}}}"
        jiva_secrets_fresh: "{{{{ fresh | default(true) }}}}"
    - name: Write what every host got
      ansible.builtin.copy:
        dest: {out}
        content: >-
          {{{{ dict(groups['jiva_nodes'] | zip(groups['jiva_nodes'] | map('extract', hostvars)
             | map('dict2items') | map('selectattr', 'key', 'in', ['jiva_replica_secret',
             'jiva_api_token']) | map('items2dict'))) | combine({{'unset':
             hostvars['localhost']['jiva_secrets_unset']}}) | to_json }}}}
        mode: "0600"
"""


def setup(tmp_path: Path, **host1: str) -> tuple[Path, Path, Path]:
    inv = tmp_path / "inventory"
    inv.mkdir()
    hosts = {"n1": host1, "n2": {}}
    (inv / "hosts.yml").write_text(json.dumps({"jiva_nodes": {"hosts": hosts}}))
    out = tmp_path / "got.json"
    play = tmp_path / "play.yml"
    play.write_text(PLAY.format(tasks=COLLECTION / "playbooks/tasks/secrets.yml", out=out))
    return inv, play, out


def run(tmp_path: Path, inv: Path, play: Path, out: Path, *extra: str) -> tuple[dict, str]:
    r = run_playbook(str(play), ROOT / "ansible.cfg", tmp_path / "home", "-i", str(inv), *extra)
    assert r.rc == 0, r.output
    return json.loads(out.read_text()), r.output


def test_fresh_cluster_generates_once_and_reuses(tmp_path):
    inv, play, out = setup(tmp_path)
    # not site.yml (generate false): nothing is created, nothing set
    got, _ = run(tmp_path, inv, play, out)
    assert got["n1"] == {} and got["unset"] == ["replica-secret", "api-token"]
    assert not (inv / ".jiva-secrets").exists()

    got, output = run(tmp_path, inv, play, out, "-e", "generate=true")
    folder = inv / ".jiva-secrets"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    secret, token = folder / "replica-secret", folder / "api-token"
    for f in (secret, token):
        assert oct(f.stat().st_mode & 0o777) == "0o600"
        assert len(f.read_text().strip()) == 43
    assert secret.read_text() != token.read_text()
    want = {"jiva_replica_secret": secret.read_text().strip(),
            "jiva_api_token": token.read_text().strip()}  # fmt: skip
    assert got["n1"] == got["n2"] == want and got["unset"] == []
    assert want["jiva_replica_secret"] not in output and want["jiva_api_token"] not in output

    # reused: a later generating run and a reading one (health.yml, failover.yml, ...)
    again, output = run(tmp_path, inv, play, out, "-e", "generate=true")
    assert again["n1"] == want and "changed=1" not in output
    read, _ = run(tmp_path, inv, play, out)
    assert read["n2"] == want


def test_inventory_values_win_and_running_clusters_get_none(tmp_path):
    inv, play, out = setup(tmp_path, jiva_api_token="from-inventory")
    # a cluster whose services already run without secrets: nothing generated, reported unset
    got, _ = run(tmp_path, inv, play, out, "-e", "generate=true", "-e", "fresh=false")
    assert not (inv / ".jiva-secrets").exists()
    assert got["unset"] == ["replica-secret", "api-token"]  # n2 has no token either
    assert got["n1"] == {"jiva_api_token": "from-inventory"} and got["n2"] == {}

    got, _ = run(tmp_path, inv, play, out, "-e", "generate=true")
    token = (inv / ".jiva-secrets" / "api-token").read_text().strip()
    secret = (inv / ".jiva-secrets" / "replica-secret").read_text().strip()
    assert got["n1"] == {"jiva_api_token": "from-inventory", "jiva_replica_secret": secret}
    assert got["n2"] == {"jiva_api_token": token, "jiva_replica_secret": secret}

    # jiva_secrets_dir moves the folder
    other = tmp_path / "elsewhere"
    got, _ = run(tmp_path, inv, play, out, "-e", "generate=true", "-e", f"jiva_secrets_dir={other}")
    assert (other / "replica-secret").read_text().strip() == got["n2"]["jiva_replica_secret"]
    assert got["n2"]["jiva_replica_secret"] != secret
