"""Offline stand-in for the pip bootstrap script ansible-test downloads (get-pip-X.Y.py).

ansible-test runs it inside each empty sanity venv; this one installs pip from the interpreter's
bundled ensurepip wheel, then asks that pip (configured package sources only) for the requested
pip version, keeping the bundled one when it cannot be had.
"""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str]) -> int:
    """Bootstrap pip in the running interpreter; argv are get-pip style options and packages."""
    subprocess.run(
        [sys.executable, "-m", "ensurepip", "--default-pip"], check=True, capture_output=True
    )
    wanted = [
        a for a in argv if not a.startswith("--no-setuptools") and not a.startswith("--no-wheel")
    ]
    p = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", *wanted], capture_output=True, text=True
    )
    if p.returncode != 0:
        sys.stderr.write(
            f"bundled pip kept; could not install {wanted}: {p.stderr.strip()[-300:]}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
