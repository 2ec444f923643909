#!/usr/bin/env bash
# sgw-agent against `rclone sync` and `aws s3 sync`, in one run on this machine (issue 5).
#
#   benches/run.sh [--reps N] [--events N] [--only SECTIONS] [--quick] [--before AGENT_BIN]
#
# Installs what it needs (rclone, curl and GNU time from apt; s3s-fs from crates.io into
# target/bench/tools; moto into .venv via scripts/setup-peer.sh; awscli from PyPI into
# target/bench/awscli-venv), builds the release agent and the bench binaries, then runs
# benches/driver.py. Writes benches/results/latest.md and benches/results/latest.json.
# Takes 20-40 minutes on 2 cores; not part of the test suite. Sections (default: all):
# crc, small, large, ceiling, ext4 (a fresh journaled ext4 per run; root and loop devices),
# memory, events, wan (the small and large sets through a delay proxy at 0, 30 and 100 ms round
# trip, TLS on; see tests/peer/delay_proxy.py), upload (a local tree into an empty bucket:
# the two-way share vs rclone copy and aws s3 sync). --quick: 1 repetition, 100 events.
# --before: another sgw-agent binary (e.g. a build of an older commit) measured side by side
# as "sgw-agent-before" in the sync tables. --variant "NAME:toml line;…": another agent
# configuration, e.g. --variant "sgw-agent-16:download_concurrency = 16". --ablate-fsync: also
# run the agent with fsync turned into a no-op (eatmydata), to show what durability costs; a
# measurement only, never a way to run the agent.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

reps=3
events=500
only="crc,small,large,ceiling,ext4,memory,events,wan,upload"
variants=()
ablate_fsync=0
while (($#)); do
    case "$1" in
        --reps) reps="$2"; shift 2 ;;
        --events) events="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --quick) reps=1; events=100; shift ;;
        --before) variants+=(--agent-variant "sgw-agent-before:bin=$(realpath "$2")"); shift 2 ;;
        --variant) variants+=(--agent-variant "$2"); shift 2 ;;
        --ablate-fsync) ablate_fsync=1; shift ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done

bench="$repo/target/bench"
tools="$bench/tools"
out="$repo/benches/results"
mkdir -p "$bench/logs" "$out"
S3S_FS_VERSION=0.14.1
AWSCLI_VERSION=1.46.2

step() { echo "==> [bench] $*" >&2; }

# --- tools ----------------------------------------------------------------------------------
missing=()
command -v rclone >/dev/null || missing+=(rclone)
command -v curl >/dev/null || missing+=(curl)
((ablate_fsync)) && ! command -v eatmydata >/dev/null && missing+=(eatmydata)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
    step "apt-get install ${missing[*]}"
    [[ "$(id -u)" == 0 ]] || { echo "run.sh: need root to install ${missing[*]}" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$bench/logs/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$bench/logs/apt.log" 2>&1
fi

s3s_fs="$tools/bin/s3s-fs"
if ! [[ -x "$s3s_fs" ]] || [[ "$("$s3s_fs" --version 2>/dev/null)" != *"$S3S_FS_VERSION"* ]]; then
    step "cargo install s3s-fs@$S3S_FS_VERSION (a few minutes)"
    cargo install "s3s-fs@$S3S_FS_VERSION" --locked --features binary --root "$tools" \
        >"$bench/logs/s3s-fs-install.log" 2>&1 ||
        { tail -n 30 "$bench/logs/s3s-fs-install.log" >&2; exit 1; }
fi

step "peer venv (moto, boto3, awscrt) via scripts/setup-peer.sh"
scripts/setup-peer.sh
venv="${SGW_TEST_VENV:-$repo/.venv}"

aws_venv="$bench/awscli-venv"
if ! [[ -x "$aws_venv/bin/aws" ]] || [[ "$("$aws_venv/bin/aws" --version 2>&1)" != *"aws-cli/$AWSCLI_VERSION "* ]]; then
    step "awscli $AWSCLI_VERSION into $aws_venv (its own venv: it pins a botocore of its own)"
    rm -rf "$aws_venv"
    python3 -m venv "$aws_venv"
    "$aws_venv/bin/pip" install --quiet --disable-pip-version-check "awscli==$AWSCLI_VERSION" \
        >"$bench/logs/awscli-install.log" 2>&1 ||
        { tail -n 30 "$bench/logs/awscli-install.log" >&2; exit 1; }
fi

if ((ablate_fsync)); then
    eatmydata_lib="$(dpkg -L libeatmydata1 | grep -m1 '/libeatmydata\.so$')"
    variants+=(--agent-variant "sgw-agent-nofsync:env=LD_PRELOAD=$eatmydata_lib")
fi

# --- builds ---------------------------------------------------------------------------------
step "cargo build --release; bench binaries"
cargo build --release --locked -p sgw-agent --bin sgw-agent
synthetic_s3="$(cargo bench --locked --bench synthetic_s3 --no-run --message-format=json 2>/dev/null |
    "$venv/bin/python" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "synthetic_s3" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$synthetic_s3" ]] || { echo "run.sh: no synthetic_s3 executable" >&2; exit 1; }

crc_args=()
if [[ ",$only," == *",crc,"* ]]; then
    step "CRC-64 throughput (cargo bench --bench crc64)"
    cargo bench --locked --bench crc64 -- --json --seconds 2 >"$bench/crc.json"
    crc_args=(--crc-json "$bench/crc.json")
fi
sections="$(echo ",$only," | sed 's/,crc,/,/; s/^,//; s/,$//')"

# --- the run --------------------------------------------------------------------------------
step "driver: sections ${sections:-none}, $reps repetitions, $events events"
"$venv/bin/python" benches/driver.py \
    --agent "$repo/target/release/sgw-agent" \
    --s3s-fs "$s3s_fs" \
    --aws "$aws_venv/bin/aws" \
    --rclone "$(command -v rclone)" \
    --moto "$venv/bin/moto_server" \
    --synthetic-s3 "$synthetic_s3" \
    --work "$bench/work" \
    --out "$out" \
    --reps "$reps" \
    --events "$events" \
    --only "${sections:-none}" \
    "${crc_args[@]}" "${variants[@]}"
step "wrote $out/latest.md and $out/latest.json"
