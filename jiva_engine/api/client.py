"""The one client of a controller's management API that the engine uses (`jiva status`,
`jiva grow`, `jiva ha watch`): HTTP, or HTTPS for an API given as `https://HOST:PORT` (a controller
started with --api-tls-cert; the CA file in $JIVA_API_CA, else the system's), never through a
proxy."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from jiva_engine.util import parse_hostport

# the API is on the storage network: an http_proxy in the environment must not be used for it
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _tls_opener(ctx: ssl.SSLContext) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )


def api_base(api: str) -> tuple[str, str, ssl.SSLContext | None]:
    """(base URL, "HOST:PORT" for messages, TLS context or None) of an API given as HOST:PORT,
    http://HOST:PORT or https://HOST:PORT. HTTPS verifies the certificate against the CA file
    in $JIVA_API_CA (else the system's CAs) and the host name or address."""
    scheme, sep, rest = api.partition("://")
    if not sep:
        scheme, rest = "http", api
    if scheme not in ("http", "https"):
        raise ValueError(f"API address {api!r}: only http:// or https://")
    host, port = parse_hostport(rest.rstrip("/"))
    where = f"{host}:{port}"
    base = f"{scheme}://{host if ':' not in host else '[' + host + ']'}:{port}"
    ctx = None
    if scheme == "https":
        ctx = ssl.create_default_context(cafile=os.environ.get("JIVA_API_CA") or None)
    return base, where, ctx


class ApiError(RuntimeError):
    """The API could not be used; the message is one line saying why (`code`: the HTTP status
    of a refusal, `doc`: its JSON body)."""

    def __init__(self, message: str, code: int | None = None, doc: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.doc = doc


def _call(
    api: str,
    path: str,
    timeout: float,
    body: dict[str, Any] | None = None,
    token: str | None = None,
    expect: str = "replicas",
    method: str | None = None,
) -> dict[str, Any]:
    """GET (or POST `body` as JSON, with `token` as bearer; or `method`) `path` on the API at
    `api` (HOST:PORT); the JSON object it answered. ApiError with the API's own message on
    refusal."""
    base, where, ctx = api_base(api)
    host, port = where.rsplit(":", 1)
    url = base + path
    req = urllib.request.Request(url, method=method)
    if body is not None:
        req.data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        opener = _OPENER if ctx is None else _tls_opener(ctx)
        with opener.open(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        why, err = e.reason, None
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
            err = json.loads(e.read())
            why = err["error"]  # the API's own message
        raise ApiError(f"API {host}:{port} answered HTTP {e.code}: {why}", e.code, err) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ApiError(f"cannot reach the API at {host}:{port}: {reason}") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ApiError(f"API {host}:{port} did not answer with JSON") from None
    if not isinstance(doc, dict) or expect not in doc:
        raise ApiError(f"API {host}:{port} answered with an unexpected document")
    return doc


def fetch_status(api: str, timeout: float = 5.0) -> dict[str, Any]:
    """The status JSON (DESIGN.md §5) of the controller whose API is at `api` (HOST:PORT)."""
    return _call(api, "/v1/volume", timeout)


def grow(api: str, size: int | str, token: str | None = None, timeout: float = 60.0) -> dict:
    """POST /v1/volume/grow: grow the volume online to `size` (bytes or "10G"); the status JSON
    after the grow, with `old_size`. ApiError naming the API's reason when it refuses."""
    return _call(api, "/v1/volume/grow", timeout, {"size": size}, token)


def scrub(
    api: str, rate: float | None = None, token: str | None = None, timeout: float = 10.0
) -> dict:
    """POST /v1/scrub: start a scrub pass (`rate` MiB/s, default the controller's); the answer
    {"name", "scrub": status}. ApiError with code 409 (and the running pass in `doc`) while one
    runs."""
    body: dict[str, Any] = {"rate": rate} if rate else {}
    return _call(api, "/v1/scrub", timeout, body, token, expect="scrub")


def _snap_path(name: str, tail: str = "") -> str:
    return "/v1/snapshots/" + urllib.parse.quote(name, safe="") + tail


def snapshot_create(api: str, name: str, token: str | None = None, timeout: float = 60.0) -> dict:
    """POST /v1/snapshots: take snapshot `name` -> {"name", "snapshot": entry}."""
    return _call(api, "/v1/snapshots", timeout, {"name": name}, token, expect="snapshot")


def snapshot_list(api: str, token: str | None = None, timeout: float = 10.0) -> dict:
    """GET /v1/snapshots -> {"name", "snapshots": [entries, oldest first], "limit"}."""
    return _call(api, "/v1/snapshots", timeout, None, token, expect="snapshots")


def snapshot_delete(api: str, name: str, token: str | None = None, timeout: float = 600.0) -> dict:
    """DELETE /v1/snapshots/NAME -> {"name", "deleted", "reclaimed"} (waits for the merge)."""
    return _call(api, _snap_path(name), timeout, None, token, expect="deleted", method="DELETE")


def snapshot_revert(api: str, name: str, token: str | None = None, timeout: float = 3600.0) -> dict:
    """POST /v1/snapshots/NAME/revert -> {"reverted", "bytes"} (waits for the copy)."""
    return _call(api, _snap_path(name, "/revert"), timeout, {}, token, expect="reverted")


def qos_show(api: str, timeout: float = 10.0) -> dict:
    """GET /v1/volume/qos -> {"name", "qos": {max_iops, max_mbps, throttled_ios,
    throttled_seconds}}."""
    return _call(api, "/v1/volume/qos", timeout, expect="qos")


def qos_set(
    api: str, limits: dict[str, Any], token: str | None = None, timeout: float = 10.0
) -> dict:
    """PUT /v1/volume/qos `limits` ({"max_iops": N|None, "max_mbps": M|None}, a key left out
    keeps its limit) -> {"name", "qos"}; ApiError naming a refused value."""
    return _call(api, "/v1/volume/qos", timeout, limits, token, expect="qos", method="PUT")
