# Run by the install role with the host's jiva_python: what decides the engine wheels it can use.
import importlib.util
import json
import os
import platform
import sys

lib, ver = platform.libc_ver()
print(
    json.dumps(
        {
            "implementation": sys.implementation.name,
            "version": "%d.%d" % sys.version_info[:2],  # noqa: UP031 - old Pythons run it too
            "machine": platform.machine(),
            "libc": lib,
            "libc_version": ver,
            "venv": all(importlib.util.find_spec(m) is not None for m in ("venv", "ensurepip")),
            "debian": os.path.exists("/etc/debian_version"),
        }
    )
)
