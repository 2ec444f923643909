#!/usr/bin/env bash
# Installs what the docker-free aarch64 build, the qemu-user test run and the packaging checks
# need, from Debian's archive (run as root; installs only what is missing, so a second run
# costs a second). Debian 12 (bookworm) amd64.
#
#   cross/setup.sh            toolchain + qemu-user (cross build and tests)
#   cross/setup.sh --package  also what the .deb checks use (lintian, binutils for dpkg-deb)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=cross/env.sh
source "$repo_root/cross/env.sh"

packages=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu
    libc6-dev-arm64-cross qemu-user)
[[ "${1:-}" == --package ]] && packages+=(lintian)

want=()
for p in "${packages[@]}"; do
    # dpkg-query knows "name:arch"; the status must be a complete install.
    if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]]; then
        want+=("$p")
    fi
done
if ((${#want[@]} == 0)) && sgw_cross_missing >/dev/null; then
    echo "cross setup: nothing missing"
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "cross setup: need root to install: ${want[*]}" >&2
    echo "  sudo dpkg --add-architecture arm64 && sudo apt-get update" >&2
    echo "  sudo apt-get install --no-install-recommends ${want[*]}" >&2
    exit 1
fi
echo "cross setup: installing ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${want[@]}"
if ! missing=$(sgw_cross_missing); then
    echo "cross setup: still missing after install: $missing" >&2
    exit 1
fi
/usr/bin/rustc --version
