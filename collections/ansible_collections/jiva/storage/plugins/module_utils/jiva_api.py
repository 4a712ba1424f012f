# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Minimal client of the jiva management API (GET /v1/volume) with the standard library only."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket

try:
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen
except ImportError:  # pragma: no cover - Python 2 is not supported, keep the import guard for sanity
    HTTPError = URLError = Exception
    Request = urlopen = None


class ApiError(Exception):
    """The API could not be reached or answered with an error."""


def api_url(address, path):
    """http://ADDRESS/PATH for a HOST:PORT address."""
    return "http://%s/%s" % (address, path.lstrip("/"))


def get_json(address, path, token=None, timeout=3.0):
    """GET a JSON document from the API; raise ApiError with a readable reason."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = "Bearer %s" % token
    req = Request(api_url(address, path), headers=headers)
    try:
        resp = urlopen(req, timeout=timeout)
        try:
            body = resp.read()
        finally:
            resp.close()
    except HTTPError as exc:
        raise ApiError("%s answered HTTP %s: %s" % (api_url(address, path), exc.code, exc.reason))
    except (URLError, socket.timeout, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError("cannot reach %s: %s" % (api_url(address, path), reason))
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError as exc:
        raise ApiError("%s returned invalid JSON: %s" % (api_url(address, path), exc))
