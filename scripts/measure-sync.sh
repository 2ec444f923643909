#!/usr/bin/env bash
# Full-sync throughput and peak RSS of the release agent against moto on loopback, for the
# object counts given (default: 10000 100000). Prints one line per count.
#   scripts/measure-sync.sh [COUNT...]      env: SIZE (bytes per object, default 4096)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
counts=("$@"); [[ ${#counts[@]} -gt 0 ]] || counts=(10000 100000)
size="${SIZE:-4096}"
scripts/setup-peer.sh
cargo build --release --quiet
venv="${SGW_TEST_VENV:-$repo/.venv}"
work="$(mktemp -d /tmp/sgw-measure.XXXXXX)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; wait $moto 2>/dev/null || true' EXIT
endpoint="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -fs "$endpoint/moto-api/" >/dev/null 2>&1 && break; sleep 0.1; done
ctl() { "$venv/bin/python" tests/peer/peerctl.py --endpoint "$endpoint" "$@"; }
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
printf '%-8s %10s %10s %10s %12s %10s\n' objects MiB seconds objects/s MB/s peakRSS_KiB
for n in "${counts[@]}"; do
    bucket="m$n"
    ctl make-bucket "$bucket" >/dev/null
    ctl put-many "$bucket" --count "$n" --size "$size" --prefix "d/" >/dev/null
    mkdir -p "$work/$n/share"
    cat >"$work/$n/agent.toml" <<TOML
state_dir = "$work/$n/state"
[[share]]
name = "m"
path = "$work/$n/share"
bucket = "$bucket"
endpoint = "$endpoint"
region = "us-east-1"
allow_http = true
download_concurrency = 8
TOML
    /usr/bin/time -f '%e %M' -o "$work/$n/time" target/release/sgw-agent -c "$work/$n/agent.toml" sync --quiet 2>"$work/$n/agent.log"
    read -r secs rss <"$work/$n/time"
    awk -v n="$n" -v s="$secs" -v b="$size" -v r="$rss" 'BEGIN { printf "%-8d %10.1f %10.2f %10.0f %12.1f %10d\n", n, n*b/1048576, s, n/s, n*b/1e6/s, r }'
done
echo "work dir: $work"
