#!/usr/bin/env bash
# The project's test command: peer venv, format and lint gates, then every test target
# (unit, property and real-peer integration tests). Prints how long each phase took.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

timings=()
current_phase=""
phase_start=""

# Runs "$@" as phase $1, merging stderr into stdout so CI logs keep cargo's order.
phase() {
    local name="$1"
    shift
    current_phase="$name"
    phase_start=$EPOCHREALTIME
    echo "==> $name: $*"
    "$@" 2>&1
    local secs
    secs=$(elapsed "$phase_start")
    timings+=("$(printf '%-28s %8s s' "$name" "$secs")")
    echo "<== $name: ${secs} s"
    current_phase=""
}

elapsed() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

report() {
    local status=$?
    if [[ -n "$current_phase" ]]; then
        echo "!!! phase '$current_phase' failed (exit $status) after $(elapsed "$phase_start") s"
    fi
    if ((${#timings[@]})); then
        echo "--- test.sh phase timings"
        printf '%s\n' "${timings[@]}"
    fi
}
trap report EXIT

# rustfmt colours its diff even into a CI log unless told not to.
fmt_args=(--all --check)
[[ -t 1 ]] || fmt_args+=(-- --color=never)

phase "peer venv" scripts/setup-peer.sh
phase "cargo fmt --check" cargo fmt "${fmt_args[@]}"
phase "cargo clippy" cargo clippy --all-targets --locked -- -D warnings
# Not --all-targets: the benches (benches/) are programs that measure or serve, not tests.
phase "cargo test" cargo test --lib --bins --tests --locked
