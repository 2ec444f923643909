#!/usr/bin/env bash
# The test suite on aarch64 without a container engine: builds every test target for
# aarch64-unknown-linux-gnu with Debian's rustc-web and the GNU cross linker, then runs the
# unit, property and real-peer integration tests under qemu-user. The test binaries and the
# agent they start are aarch64; the peer servers (moto) stay native on loopback.
#
# Needs root the first time on a fresh Debian 12 (apt packages via cross/setup.sh, a binfmt
# handler via cross/binfmt.sh); afterwards any user can run it.
#
# Env: SGW_CROSS_TEST_ARGS  extra arguments for the test binaries (e.g. a test name filter)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

registered_binfmt=""
PHASE_TAG="" PHASE_WIDTH=34
# shellcheck source=scripts/phases.sh
source scripts/phases.sh

report() {
    local status=$?
    if [[ -n "$registered_binfmt" ]]; then
        cross/binfmt.sh remove || true
    fi
    report_phases "$status" "cross-test.sh phase timings"
}
trap report EXIT

phase "cross setup" cross/setup.sh
# shellcheck source=cross/env.sh
source cross/env.sh
phase "peer venv" scripts/setup-peer.sh

# Tests are built at opt-level 1: -O0 aarch64 code under emulation is so slow that one
# state-store unit test alone takes ~4 minutes (10 s at -O1). Debug assertions and overflow
# checks stay on, as in the native run.
export CARGO_PROFILE_TEST_OPT_LEVEL=1 CARGO_PROFILE_DEV_OPT_LEVEL=1
export CARGO_PROFILE_TEST_DEBUG=line-tables-only CARGO_PROFILE_DEV_DEBUG=line-tables-only

# Not --all-targets: the benches are programs that measure or serve, not tests.
# The agent only (-p): it is what runs on the aarch64 boxes; sgw-control is tested natively.
cargo_args=(--target "$SGW_CROSS_TARGET" -p sgw-agent --lib --bins --tests --locked)
phase "build aarch64 test binaries" "$SGW_CARGO" test "${cargo_args[@]}" --no-run

agent="${CARGO_TARGET_DIR:-$repo_root/target}/$SGW_CROSS_TARGET/debug/sgw-agent"
# e_machine 0xb7 = EM_AARCH64: make sure what runs below really is the aarch64 build.
machine="$(od -An -tx1 -j18 -N2 "$agent" | tr -d ' ')"
[[ "$machine" == b700 ]] || { echo "cross-test: $agent is not an aarch64 ELF (e_machine $machine)" >&2; exit 1; }

binfmt_out="$(cross/binfmt.sh ensure "$agent")"
echo "$binfmt_out"
[[ "$binfmt_out" == *registered* ]] && registered_binfmt=1

# Skipped under emulation only (it runs natively in scripts/test.sh):
#   kill_9_at_random_instants_never_exposes_a_wrong_file kills its child 200-800 ms after
#   starting it; under qemu-user start-up eats most of that window, so it fails for lack of
#   evidence ("published too little to prove anything"), never for a wrong file. What it
#   proves (rename/fsync ordering) is the host kernel's, the same under qemu-user.
skips=(--skip kill_9_at_random_instants_never_exposes_a_wrong_file)
# shellcheck disable=SC2086
phase "cargo test (aarch64 under qemu-user)" \
    "$SGW_CARGO" test "${cargo_args[@]}" -- "${skips[@]}" ${SGW_CROSS_TEST_ARGS:-}
