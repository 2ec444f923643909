#!/usr/bin/env bash
# Checks the units the way CI does: `systemd-analyze verify` must print nothing (it exits 0
# even for unknown keys and bad values, so any output is a failure), and
# `systemd-analyze security --offline=true` must score each unit at 2.0 or lower ("OK").
#
#   systemd/check-units.sh              the units in systemd/ of this repo
#   systemd/check-units.sh --installed  the units as the package installed them
#
# verify also checks that ExecStart's binary exists. A binary that is not installed is
# replaced by a stand-in for the check, and the output says so:
#   sgw-agent    -> $SGW_AGENT_BIN (default target/release/sgw-agent), the binary the unit runs
#   sgw-control  -> $SGW_CONTROL_BIN (default target/release/sgw-control, built with
#                   `cargo build --release -p sgw-control`) if built, else a stub script (the
#                   .deb ships the agent only, so CI verifies the control unit with the stub)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
max_exposure="${SGW_MAX_EXPOSURE:-2.0}"
threshold=$(awk -v m="$max_exposure" 'BEGIN { printf "%d", m * 10 }')

if [[ "${1:-}" == --installed ]]; then
    units=(/usr/lib/systemd/system/sgw-agent.service "$repo_root/systemd/sgw-control.service")
else
    units=("$repo_root/systemd/sgw-agent.service" "$repo_root/systemd/sgw-control.service")
fi
command -v systemd-analyze >/dev/null || { echo "check-units: no systemd-analyze (apt-get install systemd)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf '#!/bin/sh\necho "stub standing in for a binary that is not installed here" >&2\nexit 1\n' >"$work/stub"
chmod 755 "$work/stub"

# verify runs `man` for each Documentation=man: page. Installed, sgw-agent(1) is in
# /usr/share/man; from the repo, the page the .deb would install (systemd/sgw-agent.1) is
# put on MANPATH for the check.
if [[ "${1:-}" != --installed ]]; then
    mkdir -p "$work/man/man1"
    cp "$repo_root/systemd/sgw-agent.1" "$work/man/man1/"
    export MANPATH="$work/man:$(manpath -q 2>/dev/null || echo /usr/share/man)"
fi

failed=0
for unit in "${units[@]}"; do
    [[ -f "$unit" ]] || { echo "check-units: missing $unit" >&2; failed=1; continue; }
    name="$(basename "$unit")"
    exec_path="$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit" | head -1)"
    stand_in=""
    if [[ ! -x "$exec_path" ]]; then
        case "$name" in
        sgw-agent.service)
            stand_in="${SGW_AGENT_BIN:-$repo_root/target/release/sgw-agent}"
            [[ -x "$stand_in" ]] || { echo "check-units: $exec_path is not installed and $stand_in is not built (cargo build --release)" >&2; failed=1; continue; }
            ;;
        sgw-control.service)
            stand_in="${SGW_CONTROL_BIN:-$repo_root/target/release/sgw-control}"
            [[ -x "$stand_in" ]] || stand_in="$work/stub"
            ;;
        *) stand_in="$work/stub" ;;
        esac
        echo "check-units: $name: $exec_path not installed; verifying with $stand_in in its place"
    fi
    # Same file name (systemd derives the unit name from it), only the binary path swapped.
    mkdir -p "$work/units"
    if [[ -n "$stand_in" ]]; then
        sed "s#^ExecStart=$exec_path#ExecStart=$stand_in#" "$unit" >"$work/units/$name"
    else
        cp "$unit" "$work/units/$name"
    fi
    out="$(systemd-analyze verify "$work/units/$name" 2>&1)" || true
    if [[ -n "$out" ]]; then
        echo "check-units: systemd-analyze verify $name: FAILED" >&2
        echo "$out" >&2
        failed=1
    else
        echo "check-units: systemd-analyze verify $name: clean"
    fi
    if ! score="$(systemd-analyze security --offline=true --threshold="$threshold" "$work/units/$name" 2>&1)"; then
        echo "$score" | grep -E '✗|Overall' >&2
        echo "check-units: $name is more exposed than $max_exposure" >&2
        failed=1
    fi
    echo "check-units: $(echo "$score" | grep 'Overall exposure level')"
done
exit "$failed"
