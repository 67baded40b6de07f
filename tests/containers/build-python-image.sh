#!/usr/bin/env bash
# Builds the In Use test's container image without a registry, idempotently:
# Debian bookworm (debootstrap minbase + python3) with known-vulnerable releases from PyPI
# installed under /opt/venv (requests 2.19.0 with its dependencies, jinja2 2.10), imported into
# podman as localhost/imprint-python:1. Prints the image id.
# Usage: build-python-image.sh PYTHON   (a Python 3 with pip: the test venv's, for the install)
# Needs root, debootstrap and podman (scripts/setup-ebpf.sh), and PyPI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="$here/containers.conf"
python="${1:?usage: build-python-image.sh PYTHON}"
image=localhost/imprint-python:1
rootfs="${IMPRINT_TEST_PYTHON_ROOTFS:-/var/tmp/imprint-python-rootfs}"
if ! podman image exists "$image"; then
  if [ ! -d "$rootfs/opt/venv" ]; then
    rm -rf "$rootfs.partial"
    mirror="$(grep -hoE 'https?://[^ ]+debian' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null | grep -v snapshot | head -1 || true)"
    echo "debootstrap bookworm with python3 from ${mirror:-http://deb.debian.org/debian} (about a minute)" >&2
    debootstrap --variant=minbase --include=python3 bookworm "$rootfs.partial" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    # Same minor version as the image's python3 (bookworm: 3.11), or the paths would differ.
    want="$(chroot "$rootfs.partial" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    have="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [ "$want" = "$have" ] || { echo "need Python $want to install for the image, $python is $have" >&2; exit 1; }
    # --target, not --prefix: --prefix uninstalls other versions of these packages from the
    # installing Python's own environment.
    "$python" -m pip install -q --disable-pip-version-check \
      --target "$rootfs.partial/opt/venv/lib/python$want/site-packages" requests==2.19.0 jinja2==2.10
    mv "$rootfs.partial" "$rootfs"
  fi
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/sh"]' - "$image" >/dev/null
fi
podman image inspect -f '{{.Id}}' "$image"
