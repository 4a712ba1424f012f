"""Small shared helpers: size and address parsing used by the CLI, engine and Ansible modules."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from `512M`, `10G`, `1T` or a byte count (binary units, a positive multiple of 512);
    ValueError otherwise. The collection's module_utils/jiva_placement.parse_size keeps the same
    rules (tests/unit/test_contracts.py holds them to it)."""
    if isinstance(text, bool):
        raise ValueError(f"invalid size {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise ValueError(f"invalid size {text!r}: use bytes or a number with K, M, G or T")
        value = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    if value % 512:
        raise ValueError(f"size {text!r} is not a multiple of 512 bytes")
    return value


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | float) -> float | None:
    """Seconds from `30s`, `30m`, `12h`, `7d`, `2w` or a number of seconds; None for `0` and
    `off` (nothing periodic). ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        if str(text).strip().lower() in ("off", "none", "never", "no", "false"):
            return None
        m = _DURATION_RE.match(str(text))
        if not m:
            raise ValueError(f"invalid duration {text!r}: use e.g. 30m, 12h, 7d, or off")
        value = float(m.group(1)) * _SECONDS[m.group(2).lower()]
    if value < 0:
        raise ValueError(f"duration must not be negative, got {text!r}")
    return value or None


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split `HOST:PORT` (or `[v6]:PORT`, or `HOST` when a default port is given)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_s = text.partition(":")
    else:
        host, port_s = text, ""
    if not host:
        raise ValueError(f"address {text!r} has no host")
    if not port_s:
        if default_port is None:
            raise ValueError(f"address {text!r} needs a port (HOST:PORT)")
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"invalid port in address {text!r}")
    return host, int(port_s)


def run_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run `main` on uvloop when it is installed (the `fast` extra), else on the stdlib loop.

    uvloop measured faster on the small-I/O paths (bench/run.py); JIVA_NO_UVLOOP=1 forces the
    stdlib loop (to compare, or to rule uvloop out when debugging). A daemon's big buffers
    stay on the heap (`buffers.tune_malloc`).
    """
    from jiva_engine.buffers import tune_malloc

    tune_malloc()
    if os.environ.get("JIVA_NO_UVLOOP") != "1":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (tests, benchmarks and the torture run pick theirs)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Wait until something accepts TCP connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def read_secret(path: str | Path, what: str = "secret") -> str:
    """The secret (shared secret, API token, CHAP secret) in a file, surrounding whitespace
    stripped; ValueError naming the file when it cannot be read or is empty."""
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise ValueError(f"cannot read {what} file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} file {path} is not text") from None
    if not text:
        raise ValueError(f"{what} file {path} is empty")
    return text


def read_secret_pair(
    path: str | None, previous_path: str | None, what: str = "secret", option: str = "--secret-file"
) -> tuple[str | None, str | None]:
    """(current, previous) from `option` and its `--previous-...` twin: the previous secret is
    the one being rotated out, accepted but never presented, so it needs a current one."""
    if previous_path and not path:
        raise ValueError(f"--previous-{option[2:]} needs {option}")
    current = read_secret(path, what) if path else None
    previous = read_secret(previous_path, f"previous {what}") if previous_path else None
    return current, previous


def setup_logging(level: str, tag: str) -> None:
    """Log to stderr as `TIME TAG LEVEL message` (a daemon's output goes to its log file)."""
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        stream=sys.stderr,
        format=f"%(asctime)s {tag} %(levelname)s %(message)s",
    )


def config_error(command: str, message: str) -> int:
    """Say why `jiva COMMAND` cannot start (one line on stderr); its exit code, 2."""
    print(f"jiva {command}: error: {message}", file=sys.stderr)
    return 2
