#!/usr/bin/env bash
# Install the Debian packages the project runs and tests with, only those that are missing.
set -euo pipefail
pkgs=(qemu-utils qemu-block-extra libiscsi-bin tgt openssh-server openssh-client iproute2 iputils-arping procps util-linux systemd sudo "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-debs: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; fi
fi
echo "install-debs: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
