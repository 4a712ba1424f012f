#!/usr/bin/env bash
# Build the engine wheel (reproducibly) and its dependency wheels into a wheelhouse on the control
# node, so hosts install with `pip --no-index --find-links` and need no package index.
# Usage: build-wheelhouse.sh [OUT_DIR]; prints "changed" when the wheelhouse content changed.
# Also writes OUT_DIR.tar (reproducible: sorted names, fixed times), the one file Ansible ships.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/build/wheelhouse}
py=${JIVA_BUILD_PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out" "$tmp/src" "$tmp/new"
# Nothing to do when the sources are those of the last build.
src_key=$(cd "$root" && { cat pyproject.toml; find jiva_engine -name '*.py' | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/.src-key" 2>/dev/null)" = "$src_key" ] && [ -f "$out.tar" ] && [ -f "$out/.deps-key" ]; then
  echo unchanged
  exit 0
fi
# Build from a clean copy: no stale build/ or egg-info from the working tree ends up in the wheel.
cp "$root/pyproject.toml" "$tmp/src/"
[ -f "$root/README.md" ] && cp "$root/README.md" "$tmp/src/" || echo "# jiva-py" >"$tmp/src/README.md"
(cd "$root" && find jiva_engine -name '*.py' -exec cp --parents {} "$tmp/src/" \;)
export SOURCE_DATE_EPOCH=315532800 PIP_DISABLE_PIP_VERSION_CHECK=1
"$py" -m pip wheel -q --no-deps -w "$tmp/new" "$tmp/src" >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
whl=$(ls "$tmp/new"/jiva_py-*.whl)
# Dependencies: download only when the wheel's Requires-Dist lines change.
deps_key=$("$py" - "$whl" <<'PY'
import hashlib, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
lines = [l for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:") and "extra ==" not in l]
print(hashlib.sha256("\n".join(lines).encode()).hexdigest())
PY
)
changed=no
if [ "$(cat "$out/.deps-key" 2>/dev/null)" != "$deps_key" ]; then
  "$py" -m pip download -q --only-binary=:all: -d "$tmp/deps" "$whl" >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
  rm -f "$tmp/deps"/jiva_py-*.whl
  find "$out" -maxdepth 1 -name '*.whl' ! -name 'jiva_py-*' -delete
  cp "$tmp/deps"/*.whl "$out/"
  echo "$deps_key" >"$out/.deps-key"
  changed=yes
fi
name=$(basename "$whl")
if ! cmp -s "$whl" "$out/$name"; then
  find "$out" -maxdepth 1 -name 'jiva_py-*.whl' -delete
  cp "$whl" "$out/$name"
  changed=yes
fi
if [ "$changed" = yes ] || [ ! -f "$out.tar" ]; then
  "$py" - "$out" <<'PY'
import os, sys, tarfile
out = sys.argv[1]
tmp = out + ".tar.tmp"
with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
    for name in sorted(os.listdir(out)):
        if name.endswith(".whl"):
            info = tar.gettarinfo(os.path.join(out, name), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 315532800, 0, 0, "", "", 0o644
            with open(os.path.join(out, name), "rb") as f:
                tar.addfile(info, f)
os.replace(tmp, out + ".tar")
PY
  changed=yes
fi
echo "$src_key" >"$out/.src-key"
[ "$changed" = yes ] && echo changed || echo unchanged
