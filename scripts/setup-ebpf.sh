#!/usr/bin/env bash
# Installs what building and testing the eBPF agent needs, idempotently
# (facts in ../shared/notes/ebpf-toolchain.md and real-components.md):
#   - LLVM 22 (apt: llvm-22-dev), the LLVM the nightly rustc here uses
#   - the nightly toolchain with rust-src (aya-build runs `-Z build-std=core`)
#   - bpf-linker 0.13.0 linked against LLVM 22
#   - podman + runc and containerd (real containers for the agent tests), strace (the oracle)
# Run as root (apt). Safe to run again: each step checks first.
set -euo pipefail

say() { printf '  - %s\n' "$*"; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

apt_install llvm-22-dev podman runc containerd slirp4netns iptables strace debootstrap curl

if ! rustup toolchain list | grep -q '^nightly'; then
  say "rustup toolchain install nightly"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  say "rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi

if ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
  say "cargo install bpf-linker 0.13.0 (LLVM 22)"
  # Its own target dir: never mixed with the workspace's build.
  LLVM_PREFIX=/usr/lib/llvm-22 CARGO_TARGET_DIR="${TMPDIR:-/tmp}/bpf-linker-build" \
    cargo install --locked bpf-linker --version 0.13.0 --no-default-features --features llvm-22
fi
say "eBPF toolchain ready: $(bpf-linker --version), $(rustc +nightly -vV | grep LLVM)"
