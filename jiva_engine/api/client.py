"""The one client of a controller's management API that the engine uses (`jiva status`,
`jiva ha watch`): GET /v1/volume over plain HTTP, never through a proxy."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from jiva_engine.util import parse_hostport

# the API is on the storage network: an http_proxy in the environment must not be used for it
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ApiError(RuntimeError):
    """The API could not be used; the message is one line saying why."""


def fetch_status(api: str, timeout: float = 5.0) -> dict[str, Any]:
    """The status JSON (DESIGN.md §5) of the controller whose API is at `api` (HOST:PORT)."""
    host, port = parse_hostport(api)
    url = f"http://{host if ':' not in host else '[' + host + ']'}:{port}/v1/volume"
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        raise ApiError(f"API {host}:{port} answered HTTP {e.code}: {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ApiError(f"cannot reach the API at {host}:{port}: {reason}") from None
    try:
        status = json.loads(body)
    except ValueError:
        raise ApiError(f"API {host}:{port} did not answer with JSON") from None
    if not isinstance(status, dict) or "replicas" not in status:
        raise ApiError(f"API {host}:{port} answered with an unexpected document")
    return status
