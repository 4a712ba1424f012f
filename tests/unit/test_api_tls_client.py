"""The collection's API client over TLS (module_utils/jiva_api.py): with a CA bundle it speaks
HTTPS to a real TLS listener and verifies the certificate against that bundle and the address;
without the bundle, with another CA or for an address the certificate does not name it refuses
with a one-line reason; a controller's certificate and key files count in its config fingerprint
(module_utils/jiva_service.py), so a renewed certificate restarts it; `jiva ha watch --api-ca`
polls the APIs over HTTPS."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import ssl
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jiva_engine import ha

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.jiva.storage.plugins.module_utils import jiva_api as A  # noqa: E402
from ansible_collections.jiva.storage.plugins.module_utils import jiva_service as S  # noqa: E402


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool, ips=()):
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ips:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in ips]),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, obj) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key, other_key, srv_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("test-ca", ca_key, None, ca_key, ca=True)
    other = _cert("other-ca", other_key, None, other_key, ca=True)
    srv = _cert("api", ca_key, ca.subject, srv_key, ca=False, ips=["127.0.0.1"])
    return {
        "ca": _pem(tmp_path / "ca.pem", ca),
        "other": _pem(tmp_path / "other.pem", other),
        "cert": _pem(tmp_path / "api.crt", srv),
        "key": _pem(tmp_path / "api.key", srv_key),
    }


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        doc = {"name": "v1", "state": "serving", "path": self.path, "replicas": [{"mode": "RW"}]}
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_port(pki: dict[str, Path]) -> Iterator[int]:
    """A TLS listener on 127.0.0.1 presenting the test certificate (IP SAN 127.0.0.1)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki["cert"]), str(pki["key"]))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_https_with_the_ca_bundle(pki, https_port):
    doc = A.get_json(f"127.0.0.1:{https_port}", "/v1/volume", ca=str(pki["ca"]))
    assert doc["state"] == "serving" and doc["path"] == "/v1/volume"
    assert A.api_url("h:1", "/v1/volume", str(pki["ca"])) == "https://h:1/v1/volume"
    assert A.api_url("h:1", "v1/volume") == "http://h:1/v1/volume"


def test_refusals_name_the_reason(pki, https_port):
    # another CA: the certificate does not verify
    with pytest.raises(A.ApiError, match="CERTIFICATE_VERIFY_FAILED") as e:
        A.get_json(f"127.0.0.1:{https_port}", "/v1/volume", ca=str(pki["other"]))
    assert f"https://127.0.0.1:{https_port}/v1/volume" in str(e.value)
    # the right CA, but an address the certificate does not name (localhost, not 127.0.0.1)
    with pytest.raises(A.ApiError, match="CERTIFICATE_VERIFY_FAILED|match"):
        A.get_json(f"localhost:{https_port}", "/v1/volume", ca=str(pki["ca"]))
    # no CA bundle: plain HTTP to a TLS listener fails
    with pytest.raises(A.ApiError, match="cannot reach http://"):
        A.get_json(f"127.0.0.1:{https_port}", "/v1/volume", timeout=2)
    # a CA bundle that cannot be read
    with pytest.raises(A.ApiError, match="cannot read the API CA bundle /nonexistent.pem"):
        A.get_json(f"127.0.0.1:{https_port}", "/v1/volume", ca="/nonexistent.pem")


def test_certificate_and_key_content_count_in_the_fingerprint():
    args = ["--volume", "db", "--api", "10.0.0.1:9800", "--portal", "10.0.0.1:3260"]
    tls = ["--api-tls-cert", "/etc/jiva/api-tls.crt", "--api-tls-key", "/etc/jiva/api-tls.key"]
    text = S.render_env("controller", "db", args + tls, "r1")
    files = {"/etc/jiva/api-tls.crt": "CERT-1", "/etc/jiva/api-tls.key": "KEY-1"}
    before = S.config_fingerprint(text, files.get)
    assert before == S.config_fingerprint(text, dict(files).get)
    renewed = dict(files, **{"/etc/jiva/api-tls.crt": "CERT-2"})
    assert S.config_fingerprint(text, renewed.get) != before
    rekeyed = dict(files, **{"/etc/jiva/api-tls.key": "KEY-2"})
    assert S.config_fingerprint(text, rekeyed.get) != before
    # turning TLS on is an argument change too
    plain = S.render_env("controller", "db", args, "r1")
    assert S.config_fingerprint(plain, files.get) != before


def test_ha_watch_polls_https_with_api_ca(pki, https_port, tmp_path, monkeypatch):
    monkeypatch.delenv("JIVA_API_CA", raising=False)  # restored after the test
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"volumes": {"v1": {"api": f"127.0.0.1:{https_port}"}}}))

    def watcher(*extra: str) -> ha.Watcher:
        parser = argparse.ArgumentParser()
        ha.add_arguments(parser)
        return ha.Watcher(parser.parse_args(["watch", "--state-file", str(state), *extra]))

    plain = watcher()
    assert ha.poll(plain.apis(), timeout=2) == {"v1": "unreachable"}  # HTTP to the HTTPS API
    tls = watcher("--api-ca", str(pki["ca"]))
    assert tls.apis() == {"v1": f"https://127.0.0.1:{https_port}"}
    assert ha.poll(tls.apis(), timeout=2) == {"v1": "serving/RW"}
