#!/usr/bin/env bash
# The edge figures: stripped aarch64 release binary size, and its peak RSS under qemu-user
# (`/usr/bin/time -v`) during a full sync of N objects (default 10,000) from a moto peer on
# loopback, checked with `compare-dir` afterwards. For scale it also measures qemu's own
# footprint (`sgw-agent --version` under qemu) and, when target/release/sgw-agent exists, the
# native x86_64 binary on the same sync, and fails if that exceeds SGW_RSS_MAX_NATIVE_KIB
# (bounded memory is a promise: it must not grow with the number of objects).
#
# Reading the qemu figure: qemu-user does not give back the memory of guest threads that have
# exited (a few hundred KiB each), and the agent starts one short-lived thread per new
# connection (ureq resolves host names on a thread when a resolve timeout is set). moto closes
# every connection, so a 10k-object sync leaves ~10k dead threads behind in qemu: the qemu RSS
# grows with the object count while the native one stays flat. It is an emulator artifact and
# an upper bound, not the agent's footprint on real ARM.
#
# Env: SGW_RSS_OBJECTS (default 10000), SGW_RSS_SIZE bytes per object (default 4096),
#      SGW_RSS_MAX_NATIVE_KIB (default 65536), SGW_TEST_VENV (peer venv, as for
#      scripts/setup-peer.sh)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
objects="${SGW_RSS_OBJECTS:-10000}"
size="${SGW_RSS_SIZE:-4096}"
[[ "$objects" =~ ^[0-9]+$ && "$size" =~ ^[0-9]+$ ]] || { echo "measure-rss: SGW_RSS_OBJECTS/SGW_RSS_SIZE must be numbers" >&2; exit 2; }
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
arm_bin="$target_dir/aarch64-unknown-linux-gnu/release/sgw-agent"
native_bin="$target_dir/release/sgw-agent"
[[ -x "$arm_bin" ]] || { echo "measure-rss: no $arm_bin; run cross/build-release.sh" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "measure-rss: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

scripts/setup-peer.sh
venv="${SGW_TEST_VENV:-$repo_root/.venv}"
python="$venv/bin/python"
work="$(mktemp -d "${TMPDIR:-/tmp}/sgw-rss.XXXXXX")"
moto_pid=""
cleanup() {
    if [[ -n "$moto_pid" ]] && kill -0 "$moto_pid" 2>/dev/null; then
        kill -TERM "$moto_pid" 2>/dev/null || true
        wait "$moto_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port="$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
endpoint="http://127.0.0.1:$port"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 1 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
peerctl() { "$python" tests/peer/peerctl.py --endpoint "$endpoint" "$@"; }
peerctl make-bucket edge >/dev/null
start=$EPOCHREALTIME
peerctl put-many edge --prefix "obj/" --count "$objects" --size "$size" >/dev/null
echo "bucket: $objects objects of $size bytes ($(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s to upload)"

# Peak RSS in KiB of one full sync into a fresh share; prints "<kib> <seconds>".
sync_rss() {
    local label="$1"
    shift
    local dir="$work/$label"
    mkdir -p "$dir/share" "$dir/state"
    cat >"$dir/agent.toml" <<TOML
state_dir = "$dir/state"

[[share]]
name = "edge"
path = "$dir/share"
bucket = "edge"
endpoint = "$endpoint"
region = "us-east-1"
allow_http = true
TOML
    local t0=$EPOCHREALTIME
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
        /usr/bin/time -v -o "$dir/time.txt" "$@" -c "$dir/agent.toml" sync --quiet \
        2>"$dir/agent.log" || { tail -20 "$dir/agent.log" >&2; echo "measure-rss: $label sync failed" >&2; return 1; }
    local secs
    secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    local result
    result=$(peerctl compare-dir edge "$dir/share" --exit-code) ||
        { echo "$result" >&2; echo "measure-rss: $label share does not match the bucket" >&2; return 1; }
    echo "$(awk '/Maximum resident set size/ { print $NF }' "$dir/time.txt") $secs"
}

baseline_kib=$(/usr/bin/time -f %M qemu-aarch64 "$arm_bin" --version 2>&1 >/dev/null | tail -1)
read -r arm_kib arm_secs < <(sync_rss aarch64 qemu-aarch64 "$arm_bin")
size_bytes=$(stat -c %s "$arm_bin")
echo "--- edge figures"
printf 'aarch64 stripped binary:        %s bytes (%.2f MiB)\n' "$size_bytes" "$(awk -v s="$size_bytes" 'BEGIN { print s / 1048576 }')"
printf 'aarch64 peak RSS, full sync:    %s KiB (%.1f MiB) under qemu-aarch64, %s s, %s objects\n' \
    "$arm_kib" "$(awk -v k="$arm_kib" 'BEGIN { print k / 1024 }')" "$arm_secs" "$objects"
printf 'qemu-aarch64 running --version: %s KiB (emulator footprint, for scale)\n' "$baseline_kib"
if [[ -x "$native_bin" ]]; then
    read -r native_kib native_secs < <(sync_rss native "$native_bin")
    printf 'x86_64 native peak RSS:         %s KiB (%.1f MiB), %s s, same sync\n' \
        "$native_kib" "$(awk -v k="$native_kib" 'BEGIN { print k / 1024 }')" "$native_secs"
    max_kib="${SGW_RSS_MAX_NATIVE_KIB:-65536}"
    if ((native_kib > max_kib)); then
        echo "measure-rss: native peak RSS $native_kib KiB exceeds $max_kib KiB: memory grows with the bucket?" >&2
        exit 1
    fi
fi
