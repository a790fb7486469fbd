#!/usr/bin/env bash
# Install the Debian packages the project needs, once. A no-op (and fast) when they are present.
# Not root or not Debian-like: print the exact command to run, and stop.
set -euo pipefail
missing=()
for pkg in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: this is not a Debian-like system; install the equivalents of: ${missing[*]}" >&2
  echo "       (QEMU, libvirt with its QEMU driver and headers, pkg-config, gcc, a kernel image, static busybox, sshd)" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing Debian packages: ${missing[*]}" >&2
  echo "       run as root:  sudo sh -c '$cmd'" >&2
  exit 1
fi
echo "== debian: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
