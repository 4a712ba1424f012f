# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Minimal client of the jiva management API (GET /v1/volume) with the standard library only."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket

from http.client import HTTPConnection, HTTPException


class ApiError(Exception):
    """The API could not be reached or answered with an error."""


def api_url(address, path):
    """http://ADDRESS/PATH for a HOST:PORT address."""
    return "http://%s/%s" % (address, path.lstrip("/"))


def split_address(address):
    """(host, port) of HOST:PORT or [v6]:PORT."""
    host, _sep, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ApiError("API address %r must be HOST:PORT" % (address,))
    return host.strip("[]"), int(port)


def get_json(address, path, token=None, timeout=3.0):
    """GET a JSON document from the API (standard library only); raise ApiError with the reason."""
    host, port = split_address(address)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = "Bearer %s" % token
    url = api_url(address, path)
    conn = HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/" + path.lstrip("/"), headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except (socket.timeout, OSError, HTTPException) as exc:
        raise ApiError("cannot reach %s: %s" % (url, exc))
    finally:
        conn.close()
    if resp.status != 200:
        raise ApiError(
            "%s answered HTTP %s: %s" % (url, resp.status, body[:200].decode("utf-8", "replace"))
        )
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError as exc:
        raise ApiError("%s returned invalid JSON: %s" % (url, exc))
