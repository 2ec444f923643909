#!/usr/bin/env bash
# The project's test command: peer venv, format and lint gates, then every test target
# (unit, property and real-peer integration tests). Prints how long each phase took.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

PHASE_TAG="" PHASE_WIDTH=28
# shellcheck source=scripts/phases.sh
source scripts/phases.sh

report() {
    report_phases $? "test.sh phase timings"
}
trap report EXIT

# rustfmt colours its diff even into a CI log unless told not to.
fmt_args=(--all --check)
[[ -t 1 ]] || fmt_args+=(-- --color=never)

phase "peer venv" scripts/setup-peer.sh
phase "cargo fmt --check" cargo fmt "${fmt_args[@]}"
# The whole workspace: the agent (root package) and the control endpoint (control/).
phase "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
# Not --all-targets: the benches (benches/) are programs that measure or serve, not tests.
# --workspace also builds both binaries before any test runs: control/tests/e2e_control.rs
# runs the agent binary from the shared target directory.
phase "cargo test" cargo test --workspace --lib --bins --tests --locked
