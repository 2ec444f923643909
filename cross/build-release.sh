#!/usr/bin/env bash
# The release binary for the edge: `cross build --release --target aarch64-unknown-linux-gnu`
# without a container engine. Prints the stripped size and checks the binary really is a
# stripped aarch64 executable. Output: target/aarch64-unknown-linux-gnu/release/sgw-agent
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
# shellcheck source=cross/env.sh
source cross/env.sh
if ! missing=$(sgw_cross_missing); then
    echo "build-release: missing $missing; run cross/setup.sh as root" >&2
    exit 1
fi

# The agent only: the aarch64 release and the .deb never contain sgw-control (control/).
"$SGW_CARGO" build --release --locked --target "$SGW_CROSS_TARGET" -p sgw-agent --bin sgw-agent
bin="${CARGO_TARGET_DIR:-$repo_root/target}/$SGW_CROSS_TARGET/release/sgw-agent"
header="$(aarch64-linux-gnu-readelf -h "$bin")"
grep -q 'Machine:.*AArch64' <<<"$header" || { echo "build-release: $bin is not aarch64" >&2; exit 1; }
if aarch64-linux-gnu-readelf -S "$bin" | grep -q '\.symtab'; then
    echo "build-release: $bin still has a symbol table ([profile.release] strip = true?)" >&2
    exit 1
fi
size=$(stat -c %s "$bin")
printf 'aarch64 release binary: %s\n  %s bytes (%s KiB), stripped\n' "$bin" "$size" "$((size / 1024))"
aarch64-linux-gnu-readelf -d "$bin" | awk '/NEEDED/ { print "  needs " $NF }'
