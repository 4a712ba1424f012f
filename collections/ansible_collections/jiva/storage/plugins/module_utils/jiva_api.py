# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Minimal client of the jiva management API (GET /v1/volume, POST /v1/volume/grow) with the
standard library only: HTTP, or HTTPS verified against a CA bundle (`ca`) for controllers started
with --api-tls-cert (inventory jiva_api_tls_cert; docs/ANSIBLE.md "TLS for the management API")."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import ssl

from http.client import HTTPConnection, HTTPException, HTTPSConnection

# The option every module that calls the API takes (doc fragment jiva.storage.api_client).
API_CLIENT_ARGS = dict(api_ca=dict(type="path"))


class ApiError(Exception):
    """The API could not be reached (status None) or answered with an error (its HTTP status)."""

    def __init__(self, msg, status=None):
        super(ApiError, self).__init__(msg)
        self.status = status


def api_url(address, path, ca=None):
    """http://ADDRESS/PATH for a HOST:PORT address; https:// when a CA bundle `ca` is given."""
    return "%s://%s/%s" % ("https" if ca else "http", address, path.lstrip("/"))


def connection(host, port, timeout, ca=None):
    """An HTTPConnection, or with a CA bundle `ca` an HTTPSConnection that verifies the server's
    certificate against that bundle and the host name or address (TLS 1.2 or later)."""
    if not ca:
        return HTTPConnection(host, port, timeout=timeout)
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (IOError, OSError, ssl.SSLError) as exc:
        raise ApiError("cannot read the API CA bundle %s: %s" % (ca, exc))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return HTTPSConnection(host, port, timeout=timeout, context=ctx)


def split_address(address):
    """(host, port) of HOST:PORT or [v6]:PORT."""
    host, _sep, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ApiError("API address %r must be HOST:PORT" % (address,))
    return host.strip("[]"), int(port)


def request_json(address, method, path, body=None, token=None, timeout=3.0, ca=None):
    """Send one request to the API (standard library only) and return its JSON answer; raise
    ApiError with the reason (unreachable, a certificate that does not verify against `ca`, an
    HTTP status other than 2xx with the API's message, invalid JSON). `body` is sent as JSON;
    with a CA bundle `ca` the request goes over HTTPS (see connection)."""
    host, port = split_address(address)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = "Bearer %s" % token
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    url = api_url(address, path, ca)
    conn = connection(host, port, timeout, ca)
    try:
        conn.request(method, "/" + path.lstrip("/"), body=data, headers=headers)
        resp = conn.getresponse()
        answer = resp.read()
    except (socket.timeout, OSError, HTTPException) as exc:
        raise ApiError("cannot reach %s: %s" % (url, exc))
    finally:
        conn.close()
    if not 200 <= resp.status < 300:
        raise ApiError(
            "%s %s answered HTTP %s: %s" % (method, url, resp.status, _message(answer)),
            status=resp.status,
        )
    try:
        return json.loads(answer.decode("utf-8"))
    except ValueError as exc:
        raise ApiError("%s returned invalid JSON: %s" % (url, exc))


def _message(answer):
    """The API's error message ({"error": ...}) or the start of the body."""
    text = answer[:300].decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    return doc.get("error", text) if isinstance(doc, dict) else text


def get_json(address, path, token=None, timeout=3.0, ca=None):
    """GET a JSON document from the API (HTTPS with a CA bundle `ca`); raise ApiError with the reason."""
    return request_json(address, "GET", path, token=token, timeout=timeout, ca=ca)
