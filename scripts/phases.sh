# Sourced by .ci/run, scripts/test.sh and scripts/cross-test.sh: run named phases, time them,
# and say which one failed. Set PHASE_TAG (a log prefix such as "[ci] ") and PHASE_WIDTH (the
# name column of the timing table) before sourcing.

timings=()
current_phase=""
phase_start=""

elapsed() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

# Runs "$@" as phase $1, merging stderr into stdout so CI logs keep cargo's order.
phase() {
    local name="$1"
    shift
    current_phase="$name"
    phase_start=$EPOCHREALTIME
    echo "==> ${PHASE_TAG:-}$name: $*"
    "$@" 2>&1
    local secs
    secs=$(elapsed "$phase_start")
    timings+=("$(printf "%-${PHASE_WIDTH:-28}s %8s s" "$name" "$secs")")
    echo "<== ${PHASE_TAG:-}$name: ${secs} s"
    current_phase=""
}

# For an EXIT trap: name the phase that failed (exit status $1), then the timings under $2.
report_phases() {
    local status="$1" title="$2"
    if [[ -n "$current_phase" ]]; then
        echo "!!! ${PHASE_TAG:-}phase '$current_phase' failed (exit $status) after $(elapsed "$phase_start") s"
    fi
    if ((${#timings[@]})); then
        echo "--- $title"
        printf '%s\n' "${timings[@]}"
    fi
}
