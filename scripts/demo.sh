#!/usr/bin/env bash
# The main job, end to end on loopback: a real S3+SNS+SQS peer (moto), a bucket of ~2000
# objects (nested prefixes, spaces, unicode), `sgw-agent sync` mirroring it into a share with
# progress shown, then `sgw-agent run` applying live changes delivered as bucket events.
# Exits non-zero if the share does not end up matching the bucket.
#
# Env: SGW_DEMO_OBJECTS  how many objects to start with (default 2000)
#      SGW_DEMO_DIR      work directory to use (default: a new one under $TMPDIR or /tmp)
#      SGW_AGENT_BIN     agent binary to run instead of building target/release/sgw-agent
#      SGW_TEST_VENV     peer venv (default <repo>/.venv), as for scripts/setup-peer.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

objects_wanted="${SGW_DEMO_OBJECTS:-2000}"
[[ "$objects_wanted" =~ ^[0-9]+$ ]] && ((objects_wanted >= 20)) ||
    { echo "demo: SGW_DEMO_OBJECTS must be a number >= 20" >&2; exit 2; }
bucket="demo-bucket"
event_wait_secs=10

bold=""; dim=""; reset=""
if [[ -t 1 ]]; then bold=$'\e[1m'; dim=$'\e[2m'; reset=$'\e[0m'; fi
demo_start=$EPOCHREALTIME
step() { echo "${bold}==> $*${reset}"; }
note() { echo "    $*"; }
fail() { echo "${bold}demo FAILED:${reset} $*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

moto_pid=""
agent_pid=""
work=""
cleanup() {
    local status=$?
    # Only the processes this script started, by their pid.
    if [[ -n "$agent_pid" ]] && kill -0 "$agent_pid" 2>/dev/null; then
        kill -TERM "$agent_pid" 2>/dev/null || true
        wait "$agent_pid" 2>/dev/null || true
    fi
    if [[ -n "$moto_pid" ]] && kill -0 "$moto_pid" 2>/dev/null; then
        kill -TERM "$moto_pid" 2>/dev/null || true
        wait "$moto_pid" 2>/dev/null || true
    fi
    if ((status != 0)) && [[ -n "$work" ]]; then
        echo "    work dir kept for inspection: $work" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. peer venv and agent binary --------------------------------------------------------
step "Installing the test peer (moto) into .venv"
scripts/setup-peer.sh
venv="${SGW_TEST_VENV:-$repo_root/.venv}"
python="$venv/bin/python"
peerctl() { "$python" "$repo_root/tests/peer/peerctl.py" --endpoint "$endpoint" "$@"; }
# One field of a peerctl JSON answer.
json_field() { "$python" -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

if [[ -n "${SGW_AGENT_BIN:-}" ]]; then
    agent="$SGW_AGENT_BIN"
    step "Using the agent binary from SGW_AGENT_BIN: $agent"
else
    step "Building sgw-agent (release)"
    cargo build --release --locked
    agent="${CARGO_TARGET_DIR:-$repo_root/target}/release/sgw-agent"
fi
[[ -x "$agent" ]] || fail "no agent binary at $agent"

# --- 2. peer on a free loopback port ------------------------------------------------------
work="${SGW_DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sgw-demo.XXXXXX")}"
mkdir -p "$work"
share="$work/share"
state="$work/state"
config="$work/agent.toml"
mkdir -p "$share" "$state"

port="$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
endpoint="http://127.0.0.1:$port"
step "Starting moto on $endpoint ${dim}(log: $work/moto.log)${reset}"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$moto_pid" 2>/dev/null || fail "moto exited; see $work/moto.log"
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || fail "moto did not answer within 15 s"

# --- 3. bucket with objects ---------------------------------------------------------------
step "Creating bucket '$bucket' with $objects_wanted objects"
peerctl make-bucket "$bucket" >/dev/null
# Groups of keys: deep nesting, spaces, unicode (Latin and CJK), sizes from 2 to 16 KiB.
"$python" - "$work" "$objects_wanted" <<'PY'
import sys
work, total = sys.argv[1], int(sys.argv[2])
photos, data, deep = total * 15 // 100, total * 8 // 100, total * 2 // 100
docs = total - photos - data - deep
groups = {
    "docs": [f"{2020 + i % 5}/{i % 12 + 1:02d}/report-{i:05d}.txt" for i in range(docs)],
    "photos": [f"été 2024/IMG {i:04d}.jpg" for i in range(photos)],
    "data": [f"日本語/ファイル-{i:04d}.bin" for i in range(data)],
    "deep": [f"a/b/c/d/e/f/g/leaf {i:03d}" for i in range(deep)],
}
for name, keys in groups.items():
    with open(f"{work}/keys-{name}.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(keys) + "\n")
PY
put_start=$EPOCHREALTIME
put_total=0
for group in docs:2048 photos:16384 data:4096 deep:2048; do
    name="${group%%:*}"
    size="${group##*:}"
    count=$(peerctl put-many "$bucket" --prefix "$name/" --size "$size" \
        --keys-file "$work/keys-$name.txt" --workers 8 | json_field count)
    put_total=$((put_total + count))
    note "$name/: $count objects of $size bytes"
done
note "$put_total objects stored in $(since "$put_start") s"

step "Wiring bucket events: S3 -> SNS topic -> SQS queue (raw delivery)"
wired=$(peerctl wire-events "$bucket" --name demo-share)
queue_url=$(json_field queue_url <<<"$wired")
note "queue: $queue_url"

# --- 4. config and full sync --------------------------------------------------------------
"$python" - "$config" "$state" "$share" "$bucket" "$endpoint" "$queue_url" <<'PY'
import json, sys
config, state, share, bucket, endpoint, queue = sys.argv[1:]
q = json.dumps  # a JSON string is a valid TOML basic string for these values
with open(config, "w", encoding="utf-8") as f:
    f.write(f"""state_dir = {q(state)}

[[share]]
name = "demo"
path = {q(share)}
bucket = {q(bucket)}
prefix = ""
endpoint = {q(endpoint)}
region = "us-east-1"
queue_url = {q(queue)}
allow_http = true
""")
PY
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
note "config: $config"
"$agent" -c "$config" check-config || fail "sgw-agent check-config rejected $config"

step "Full sync: sgw-agent sync"
sync_start=$EPOCHREALTIME
"$agent" -c "$config" sync || fail "sgw-agent sync exited with $?"
sync_secs=$(since "$sync_start")
note "full sync took $sync_secs s"

compare() { peerctl compare-dir "$bucket" "$share" --exit-code; }
if ! result=$(compare); then
    echo "$result" >&2
    fail "after the full sync the share does not match the bucket"
fi
note "share matches the bucket: $(json_field objects <<<"$result") objects"

# --- 5. live changes through events -------------------------------------------------------
step "Starting sgw-agent run in the background ${dim}(log: $work/agent-run.log)${reset}"
"$agent" -c "$config" run >"$work/agent-run.log" 2>&1 &
agent_pid=$!
sleep 1
kill -0 "$agent_pid" 2>/dev/null || fail "sgw-agent run exited at once; see $work/agent-run.log"

step "Changing the bucket: 2 new objects, 1 overwrite, 1 delete"
peerctl put "$bucket" "live/new file ü.txt" --text "created while the agent runs" >/dev/null
peerctl put "$bucket" "live/deep/er/added.txt" --text "nested and new" >/dev/null
overwritten="photos/été 2024/IMG 0000.jpg"
peerctl put "$bucket" "$overwritten" --text "overwritten: not a JPEG any more" >/dev/null
deleted="docs/2020/01/report-00000.txt"
peerctl delete "$bucket" "$deleted" >/dev/null
changed_at=$EPOCHREALTIME
note "new: live/new file ü.txt, live/deep/er/added.txt; overwritten: $overwritten; deleted: $deleted"

step "Waiting up to $event_wait_secs s for the share to follow"
deadline=$(awk -v t="$EPOCHREALTIME" -v w="$event_wait_secs" 'BEGIN { printf "%.3f", t + w }')
converged=""
while :; do
    if result=$(compare); then converged=yes; break; fi
    awk -v t="$EPOCHREALTIME" -v d="$deadline" 'BEGIN { exit !(t < d) }' || break
    kill -0 "$agent_pid" 2>/dev/null || break
    sleep 0.3
done
event_secs=$(since "$changed_at")
if [[ -n "$converged" ]]; then
    note "share followed the changes in $event_secs s"
else
    echo "$result" >&2
    echo "    last lines of $work/agent-run.log:" >&2
    tail -n 20 "$work/agent-run.log" >&2 || true
fi

step "sgw-agent status"
"$agent" -c "$config" status || note "(status exited with $?)"

# --- 6. stop everything -------------------------------------------------------------------
step "Stopping the agent (SIGTERM)"
agent_exit=0
if kill -0 "$agent_pid" 2>/dev/null; then
    kill -TERM "$agent_pid"
    for _ in $(seq 1 200); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$agent_pid" 2>/dev/null; then
        note "still running after 20 s; sending SIGKILL"
        kill -KILL "$agent_pid" 2>/dev/null || true
    fi
fi
wait "$agent_pid" || agent_exit=$?
agent_pid=""
note "agent exited with $agent_exit"
kill -TERM "$moto_pid" 2>/dev/null || true
wait "$moto_pid" 2>/dev/null || true
moto_pid=""

# --- 7. summary ---------------------------------------------------------------------------
step "Summary"
note "objects in bucket : $(json_field objects <<<"$result")  (files in share: $(json_field files <<<"$result"))"
note "initial put       : $put_total objects"
note "full sync         : $sync_secs s"
note "events applied in : $event_secs s ${dim}(limit $event_wait_secs s)${reset}"
note "agent exit        : $agent_exit (after SIGTERM)"
note "total             : $(since "$demo_start") s"
note "work dir          : $work  (share/, state/, agent.toml, agent-run.log, moto.log)"
[[ -n "$converged" ]] || fail "the share did not match the bucket within $event_wait_secs s"
((agent_exit == 0)) || fail "sgw-agent run exited with $agent_exit after SIGTERM (expected 0)"
echo "${bold}demo OK${reset}"
