"""TLS for the management API from the inventory (jiva_api_tls_cert, jiva_api_tls_key,
jiva_api_ca): site.yml refuses incomplete settings naming the variable, installs the certificate,
key (0600) and CA bundle on the hosts and starts the controllers with --api-tls-cert/--api-tls-key;
the API then speaks HTTPS only (plain HTTP and a client without the CA fail), while health.yml,
snapshot.yml, backup.yml, the hosts' node_state and Prometheus (monitoring.yml) use the CA; a new
certificate restarts the controller (the rolling play) and it then presents the new one."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import random
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.sandbox import (  # noqa: F401 - local_daemons_fixture provides the fixture
    ROOT,
    frozen_wheelhouse,
    local_daemons_fixture,
    local_inventory,
    run_playbook,
)

# a loopback /24 of its own per run, so concurrent runs on one machine do not clash
NET = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
PORTAL = f"{NET}.51"
API = f"{PORTAL}:9860"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(folder: Path, cn: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA key and self-signed certificate; (PEM path of the certificate, key, certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{cn}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server(
    folder: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, ips: list[str], tag: str
) -> tuple[Path, Path, int]:
    """A server certificate for the addresses `ips` (IP SANs) signed by the CA: (cert, key, serial)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"jiva-api-{tag}"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in ips]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    crt, pem = folder / f"api-{tag}.crt", folder / f"api-{tag}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.chmod(0o600)
    return crt, pem, serial


def https_json(url: str, ca: Path | None) -> dict:
    """GET url over HTTPS trusting only `ca` (None: the system's CAs), no proxy."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )
    with opener.open(url, timeout=5) as r:
        body = r.read()
    return json.loads(body) if url.endswith(("/v1/volume", "/v1/snapshots")) else {"text": body}


def served_serial(ca: Path) -> int:
    """The serial number of the certificate the API presents now."""
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(PORTAL, 9860, timeout=5, context=ctx)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()
    return x509.load_der_x509_certificate(der).serial_number


def write_inventory(base: Path, **tls: str) -> Path:
    volumes = [{"name": "tv1", "size": "16M", "replicas": 3, "portal": f"{PORTAL}:3260"}]
    return local_inventory(
        base, [f"{NET}.{30 + i}" for i in range(1, 4)], volumes,
        jiva_replica_port_base=9760, jiva_api_port_base=9860, jiva_metrics_port_base=9960, **tls,
    )  # fmt: skip


@pytest.mark.timeout(1200)  # a deploy, a roll and six playbook runs on a loaded 2-core machine
@pytest.mark.usefixtures("local_daemons")
def test_api_tls_from_the_inventory(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, ca_key, ca_cert = make_ca(pki, "jiva-test-ca")
    other_ca, _k, _c = make_ca(pki, "some-other-ca")
    cert, key, serial = make_server(pki, ca_key, ca_cert, [PORTAL], "one")
    home = tmp_path / "ansible-home"
    cfg = ROOT / "ansible.cfg"

    # incomplete settings are refused before any host is touched, naming the variable
    inv = write_inventory(tmp_path, jiva_api_tls_cert=str(cert), jiva_api_ca=str(ca))
    bad = run_playbook("site.yml", cfg, home, "-i", str(inv))
    assert bad.rc != 0 and "jiva_api_tls_cert is set but jiva_api_tls_key is not" in bad.output
    assert not (tmp_path / "nodes").exists()

    tls = {"jiva_api_tls_cert": str(cert), "jiva_api_tls_key": str(key), "jiva_api_ca": str(ca)}
    inv = write_inventory(tmp_path, **tls)
    base_args = ["-i", str(inv), *frozen_wheelhouse(tmp_path)]
    deploy = run_playbook("site.yml", cfg, home, *base_args)
    assert deploy.rc == 0, deploy.output
    assert key.read_text() not in deploy.output

    # the files on the controller host, the controller's arguments
    envs = list(tmp_path.glob("nodes/*/etc/controller-tv1.env"))
    assert len(envs) == 1, envs
    etc = envs[0].parent
    assert (etc / "api-tls.crt").read_bytes() == cert.read_bytes()
    assert (etc / "api-tls.key").read_bytes() == key.read_bytes()
    assert oct((etc / "api-tls.key").stat().st_mode & 0o777) == "0o600"
    assert (etc / "api-ca.pem").read_bytes() == ca.read_bytes()
    args = envs[0].read_text()
    assert f"--api-tls-cert {etc}/api-tls.crt --api-tls-key {etc}/api-tls.key" in args, args

    # HTTPS with the CA; plain HTTP and HTTPS without it (or with another CA) fail
    st = https_json(f"https://{API}/v1/volume", ca)
    assert st["state"] == "serving" and len(st["replicas"]) == 3, st
    assert served_serial(ca) == serial
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://{API}/v1/volume", timeout=5
        )
    for untrusted in (None, other_ca):
        with pytest.raises(urllib.error.URLError) as err:
            https_json(f"https://{API}/v1/volume", untrusted)
        assert isinstance(err.value.reason, ssl.SSLCertVerificationError), err.value

    # /metrics lives on the API listener: HTTPS too; the replicas' metrics listeners stay HTTP
    text = https_json(f"https://{API}/metrics", ca)["text"].decode()
    assert 'jiva_volume_up{volume="tv1"} 1' in text, text[:2000]
    replica = st["replicas"][0]["address"]
    rhost, rport = replica.rsplit(":", 1)
    with urllib.request.urlopen(f"http://{rhost}:{int(rport) - 9760 + 9960}/metrics", timeout=5):
        pass
    mon = tmp_path / "monitoring"
    wrote = run_playbook(
        "monitoring.yml", cfg, home, *base_args, "-e", f"jiva_monitoring_dir={mon}"
    )
    assert wrote.rc == 0, wrote.output
    jobs = {
        j["job_name"]: j
        for j in yaml.safe_load((mon / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert jobs["jiva-controller"]["scheme"] == "https"
    assert jobs["jiva-controller"]["tls_config"] == {"ca_file": "jiva-api-ca.pem"}
    assert (mon / "jiva-api-ca.pem").read_bytes() == ca.read_bytes()
    assert "scheme" not in jobs["jiva-replica"]

    # health.yml reads the API over HTTPS: healthy
    report = tmp_path / "health.json"
    healthy = run_playbook("health.yml", cfg, home, *base_args, "-e", f"jiva_health_file={report}")
    assert healthy.rc == 0, healthy.output
    doc = json.loads(report.read_text())
    (row,) = doc["volumes"]
    assert row["state"] == "serving" and row["degraded"] is False and doc["degraded"] == [], doc

    # snapshot.yml and backup.yml (its snapshot, and `jiva backup create` over https)
    took = run_playbook("snapshot.yml", cfg, home, *base_args, "-e", "jiva_snapshot_name=s1")
    assert took.rc == 0 and took.changed() == 1, took.output
    names = [s["name"] for s in https_json(f"https://{API}/v1/snapshots", ca)["snapshots"]]
    assert names == ["s1"]
    store = tmp_path / "backups"
    backed = run_playbook("backup.yml", cfg, home, *base_args, "-e", f"jiva_backup_dir={store}")
    assert backed.rc == 0, backed.output
    assert list(store.rglob("*tv1-*")), "no backup written"

    # node_state (failover.yml's and drain.yml's view from the hosts) asks the controller over https
    node = etc.parent
    book = tmp_path / "ns.yml"
    out = tmp_path / "ns.json"
    ns_args = {"config_dir": str(etc), "run_dir": str(node / "run"), "data_dir": str(node / "data"),
               "service_manager": "daemon", "api_ca": str(etc / "api-ca.pem")}  # fmt: skip
    book.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"jiva.storage.node_state": ns_args, "register": "r"},
        {"ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(out), "mode": "0600"}},
    ]}]))  # fmt: skip
    ran = run_playbook(str(book), cfg, home)
    assert ran.rc == 0, ran.output
    assert json.loads(out.read_text())["controller_status"]["tv1"]["state"] == "serving"

    # a new certificate (same CA) restarts the controller through the rolling play
    new_cert, new_key, new_serial = make_server(pki, ca_key, ca_cert, [PORTAL], "two")
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    rolled = run_playbook("site.yml", cfg, home, *base_args)
    assert rolled.rc == 0, rolled.output
    assert "Rolling restart of this host" in rolled.output, rolled.output
    assert served_serial(ca) == new_serial != serial
    assert https_json(f"https://{API}/v1/volume", ca)["state"] == "serving"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"jiva_api_tls_key": "KEY"}, "n1: jiva_api_tls_key is set but jiva_api_tls_cert is not"),
        ({"jiva_api_ca": "CA"}, "n1: jiva_api_ca is set but jiva_api_tls_cert is not"),
        (
            {"jiva_api_tls_cert": "CERT", "jiva_api_tls_key": "KEY"},
            "n1: jiva_api_tls_cert is set but jiva_api_ca is not",
        ),
        (
            {
                "jiva_api_tls_cert": "CERT",
                "jiva_api_tls_key": "/nonexistent.key",
                "jiva_api_ca": "CA",
            },
            "n1: jiva_api_tls_key /nonexistent.key is not a file on the control node",
        ),
        (
            {
                "jiva_api_tls_cert": "CERT",
                "jiva_api_tls_key": "KEY",
                "jiva_api_ca": "CA",
                "n2": "CA2",
            },
            "n2: jiva_api_ca differs from that of host n1",
        ),
    ],
)
def test_incomplete_tls_settings_are_refused_naming_the_variable(tmp_path, settings, message):
    """Refused by the validation play, before any host is touched."""
    files = {k: tmp_path / f"{k.lower()}.pem" for k in ("CERT", "KEY", "CA", "CA2")}
    for f in files.values():
        f.write_text("PEM\n")
    tls = {k: str(files.get(v, v)) for k, v in settings.items() if k != "n2"}
    inv = write_inventory(tmp_path, **tls)
    if "n2" in settings:  # host n2's own CA bundle (host vars win over the group's)
        hosts = json.loads((inv / "hosts.yml").read_text())
        hosts["jiva_nodes"]["hosts"]["n2"]["jiva_api_ca"] = str(files[settings["n2"]])
        (inv / "hosts.yml").write_text(json.dumps(hosts))
    run = run_playbook("site.yml", ROOT / "ansible.cfg", tmp_path / "home", "-i", str(inv))
    assert run.rc != 0 and f"host {message}" in run.output, run.output
    assert not (tmp_path / "nodes").exists()
