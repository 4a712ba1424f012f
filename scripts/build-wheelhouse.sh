#!/usr/bin/env bash
# Build the engine wheelhouse for one target (CPython version, CPU, glibc floor) on the control
# node, so hosts install with `pip --no-index --find-links` and need no package index.
# Usage: build-wheelhouse.sh [--python X.Y] [--platform ARCH] [--glibc 2.N] [--for PYTHON] [OUT]
#        build-wheelhouse.sh --target TARGET [--target TARGET...] [OUT]   (what the install role runs)
#   OUT (default build/wheelhouse) is a folder of targets: OUT/TARGET/*.whl and OUT/TARGET.tar
#   (reproducible: sorted names, fixed times), TARGET like cp313-manylinux_2_36_x86_64. Without
#   options the target is the build Python's own; --platform without --glibc means glibc 2.17.
#   Prints "changed TARGET" or "unchanged TARGET". Details: scripts/wheelhouse.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${JIVA_BUILD_PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
exec "$py" "$root/scripts/wheelhouse.py" build "$@"
