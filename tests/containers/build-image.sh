#!/usr/bin/env bash
# Builds the agent tests' container image without a registry, idempotently:
# a Debian minbase root filesystem (debootstrap, from the machine's own Debian mirror) with
# python3-minimal and the workload, imported into podman as localhost/imprint-workload:1.
# Prints the image id. Needs root, debootstrap and podman (scripts/setup-ebpf.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="$here/containers.conf"
image=localhost/imprint-workload:1
rootfs="${IMPRINT_TEST_ROOTFS:-/var/tmp/imprint-workload-rootfs}"
if ! podman image exists "$image"; then
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    rm -rf "$rootfs.partial"
    mirror="$(grep -hoE 'https?://[^ ]+debian' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null | grep -v snapshot | head -1 || true)"
    echo "debootstrap bookworm from ${mirror:-http://deb.debian.org/debian} (about a minute)" >&2
    debootstrap --variant=minbase --include=python3-minimal bookworm "$rootfs.partial" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    mv "$rootfs.partial" "$rootfs"
  fi
  install -m 0755 "$here/workload.sh" "$rootfs/workload.sh"
  install -m 0644 "$here/net.py" "$rootfs/net.py"
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/sh"]' - "$image" >/dev/null
fi
podman image inspect -f '{{.Id}}' "$image"
