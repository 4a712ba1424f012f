#!/usr/bin/env bash
# Print the path of a `promtool` (Prometheus' config and rule checker) for the monitoring tests:
# the one on PATH, else one unpacked from Debian's `prometheus` package into build/promtool
# (apt-get download + dpkg-deb -x: no root, no daemon started, nothing installed system-wide).
# Exit 1 (and say why on stderr) when neither works, e.g. offline without apt.
set -euo pipefail
if command -v promtool >/dev/null; then command -v promtool; exit 0; fi
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/build/promtool"
bin="$dest/usr/bin/promtool"
if [ ! -x "$bin" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1) || { echo "promtool.sh: apt-get download prometheus failed" >&2; exit 1; }
  mkdir -p "$dest"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  install -D -m 0755 "$tmp/x/usr/bin/promtool" "$bin"
fi
"$bin" --version >/dev/null
echo "$bin"
