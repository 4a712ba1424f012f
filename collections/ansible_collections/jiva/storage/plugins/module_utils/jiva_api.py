# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Minimal client of the jiva management API (GET /v1/volume, POST /v1/volume/grow) with the
standard library only."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket

from http.client import HTTPConnection, HTTPException


class ApiError(Exception):
    """The API could not be reached (status None) or answered with an error (its HTTP status)."""

    def __init__(self, msg, status=None):
        super(ApiError, self).__init__(msg)
        self.status = status


def api_url(address, path):
    """http://ADDRESS/PATH for a HOST:PORT address."""
    return "http://%s/%s" % (address, path.lstrip("/"))


def split_address(address):
    """(host, port) of HOST:PORT or [v6]:PORT."""
    host, _sep, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ApiError("API address %r must be HOST:PORT" % (address,))
    return host.strip("[]"), int(port)


def request_json(address, method, path, body=None, token=None, timeout=3.0):
    """Send one request to the API (standard library only) and return its JSON answer; raise
    ApiError with the reason (unreachable, an HTTP status other than 2xx with the API's
    message, invalid JSON). `body` is sent as JSON."""
    host, port = split_address(address)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = "Bearer %s" % token
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    url = api_url(address, path)
    conn = HTTPConnection(host, port, timeout=timeout)
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


def get_json(address, path, token=None, timeout=3.0):
    """GET a JSON document from the API; raise ApiError with the reason."""
    return request_json(address, "GET", path, token=token, timeout=timeout)
