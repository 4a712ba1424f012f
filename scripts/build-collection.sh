#!/usr/bin/env bash
# Build the jiva.storage collection tarball an operator installs with
# `ansible-galaxy collection install`: its modules, roles and playbooks, plus the engine wheel
# (roles/install/files/jiva_py-VERSION-py3-none-any.whl), so the install role needs no checkout:
# it builds each host's wheelhouse from that wheel (docs/ANSIBLE.md "Installing the collection").
# Usage: build-collection.sh [OUT_DIR]   (default dist/); prints the tarball's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)
py=${JIVA_BUILD_PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
galaxy=$(dirname "$py")/ansible-galaxy
[ -x "$galaxy" ] || galaxy=ansible-galaxy
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# a copy of the collection (never written into the checkout), without ansible-test output
mkdir -p "$tmp/ansible_collections/jiva"
cp -a "$root/collections/ansible_collections/jiva/storage" "$tmp/ansible_collections/jiva/storage"
coll=$tmp/ansible_collections/jiva/storage
rm -rf "$coll/tests/output"
mkdir -p "$coll/roles/install/files"
# the engine wheel, built as the wheelhouses build it (a clean copy of the sources, reproducible)
"$py" "$root/scripts/wheelhouse.py" engine-wheel "$coll/roles/install/files" >/dev/null
# and the wheelhouse builder the install role runs with that wheel (scripts/wheelhouse.py)
cp "$root/scripts/wheelhouse.py" "$coll/roles/install/files/wheelhouse.py"
"$galaxy" collection build --force --output-path "$out" "$coll" >"$tmp/log" 2>&1 \
  || { cat "$tmp/log" >&2; exit 1; }
ls "$out"/jiva-storage-*.tar.gz | tail -1
