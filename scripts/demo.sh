#!/usr/bin/env bash
# The product as a user runs it, end to end on loopback: a real S3+SNS+SQS peer (moto) with a
# bucket of ~2000 objects (nested prefixes, spaces, unicode); sgw-control started as the
# control endpoint; a gateway added to it (`sgw-control gateway add`); an agent that knows only
# control_endpoint, gateway_id, gateway_secret_file and its share directory, checked with
# `check-config --online` and started with `sgw-agent run`; an express sync group created and
# the share added with the official Alibaba Cloud SDKs (alibabacloud-sgw20180511 and
# aliyun-python-sdk-sgw, unmodified); the mirroring watched as SyncProgress through the SDK;
# then live changes delivered as bucket events; then a second gateway and a second group of
# two two-way shares, one at each gateway, exchanging a file both ways. Exits non-zero if a
# share does not end up matching the bucket or the file does not cross.
#
# Gateways are set up by add_gateway NAME SHARE (section 4): a second gateway is one more
# add_gateway, start_agent and add_share_to_group call, and a `compare DIR` of its share.
#
# Env: SGW_DEMO_OBJECTS  how many objects to start with (default 2000)
#      SGW_DEMO_DIR      work directory to use (default: a new one under $TMPDIR or /tmp)
#      SGW_AGENT_BIN     agent binary to run instead of building target/release/sgw-agent
#      SGW_CONTROL_BIN   sgw-control binary instead of building target/release/sgw-control
#      SGW_TEST_VENV     peer venv (default <repo>/.venv), as for scripts/setup-peer.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

objects_wanted="${SGW_DEMO_OBJECTS:-2000}"
[[ "$objects_wanted" =~ ^[0-9]+$ ]] && ((objects_wanted >= 20)) ||
    { echo "demo: SGW_DEMO_OBJECTS must be a number >= 20" >&2; exit 2; }
bucket="demo-bucket"
projects_bucket="demo-projects"
event_wait_secs=10

bold=""; dim=""; reset=""
if [[ -t 1 ]]; then bold=$'\e[1m'; dim=$'\e[2m'; reset=$'\e[0m'; fi
demo_start=$EPOCHREALTIME
step() { echo "${bold}==> $*${reset}"; }
note() { echo "    $*"; }
fail() { echo "${bold}demo FAILED:${reset} $*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

moto_pid=""
control_pid=""
agent_pids=()
work=""
cleanup() {
    local status=$?
    # Only the processes this script started, by their pid.
    local pid
    for pid in "${agent_pids[@]}" "$control_pid" "$moto_pid"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
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

if [[ -n "${SGW_AGENT_BIN:-}" && -n "${SGW_CONTROL_BIN:-}" ]]; then
    agent="$SGW_AGENT_BIN"
    control="$SGW_CONTROL_BIN"
    step "Using the binaries from SGW_AGENT_BIN and SGW_CONTROL_BIN"
else
    step "Building sgw-agent and sgw-control (release)"
    cargo build --release --locked -p sgw-agent -p sgw-control
    agent="${SGW_AGENT_BIN:-${CARGO_TARGET_DIR:-$repo_root/target}/release/sgw-agent}"
    control="${SGW_CONTROL_BIN:-${CARGO_TARGET_DIR:-$repo_root/target}/release/sgw-control}"
fi
[[ -x "$agent" ]] || fail "no agent binary at $agent"
[[ -x "$control" ]] || fail "no sgw-control binary at $control"

# --- 2. peer on a free loopback port ------------------------------------------------------
work="${SGW_DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sgw-demo.XXXXXX")}"
mkdir -p "$work"

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

# --- 4. the control endpoint, a gateway, its agent ---------------------------------------
# The bucket's credentials: moto takes any; on AWS they are the agent's own (the control
# endpoint assigns buckets, it does not hand out credentials).
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
# The operator's API key for the SDK (installed by sgw-control at start-up).
api_ak="demo-operator"
api_sk="demo-operator-secret-$RANDOM$RANDOM"
control_data="$work/control-data"
printf 'poll_interval_secs = 1\n' >"$work/control.toml"
step "Starting sgw-control ${dim}(log: $work/control.log)${reset}"
SGW_ACCESS_KEY_ID="$api_ak" SGW_ACCESS_KEY_SECRET="$api_sk" \
    "$control" -c "$work/control.toml" --listen 127.0.0.1:0 --data-dir "$control_data" \
    --cloud-endpoint "$endpoint" --cloud-region us-east-1 \
    >"$work/control.out" 2>"$work/control.log" &
control_pid=$!
control_addr=""
for _ in $(seq 1 100); do
    control_addr=$(sed -n 's#^listening on http://##p' "$work/control.out" 2>/dev/null | head -1)
    [[ -n "$control_addr" ]] && break
    kill -0 "$control_pid" 2>/dev/null || fail "sgw-control exited; see $work/control.log"
    sleep 0.1
done
[[ -n "$control_addr" ]] || fail "sgw-control did not start within 10 s; see $work/control.log"
note "control endpoint: http://$control_addr (API key $api_ak)"

# One call of the official SDK: sdk tea|rpc ACTION JSON-PARAMS -> the answer's body (JSON).
sdk() {
    local answer
    answer=$("$python" "$repo_root/tests/peer/sdk_call.py" --sdk "$1" --endpoint "$control_addr" \
        --ak "$api_ak" --secret "$api_sk" "$2" --params "$3") || fail "sdk_call.py $2 failed"
    "$python" -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps(r["body"])) if r["ok"] else sys.exit("SDK %s: %s %s" % (sys.argv[1], r.get("code"), r.get("message")))' "$2" <<<"$answer" ||
        fail "$2 was refused"
}

# add_gateway NAME SHARE: `sgw-control gateway add NAME`, then the agent's own directory
# $work/NAME/ with its share, state, secret file and agent.toml. Sets gateway_id[NAME].
declare -A gateway_id=()
add_gateway() {
    local name="$1" share_name="$2" dir="$work/$1" added id secret
    mkdir -p "$dir/shares/$share_name" "$dir/state"
    added=$("$control" --data-dir "$control_data" gateway add "$name" --region us-east-1) ||
        fail "sgw-control gateway add $name failed"
    id=$(sed -n 's/^gateway_id = "\(.*\)"$/\1/p' <<<"$added")
    secret=$(sed -n 's/^gateway_secret = "\(.*\)"$/\1/p' <<<"$added")
    [[ -n "$id" && -n "$secret" ]] || fail "gateway add printed no id/secret: $added"
    gateway_id[$name]="$id"
    (umask 077; printf '%s\n' "$secret" >"$dir/gateway.secret")
    cat >"$dir/agent.toml" <<TOML
state_dir = "$dir/state"
# Attached by gateway id: the bucket, prefix and queue of each share come from the group
# the operator adds it to.
control_endpoint = "http://$control_addr"
control_allow_http = true
gateway_id = "$id"
gateway_secret_file = "$dir/gateway.secret"

[[share]]
name = "$share_name"
path = "$dir/shares/$share_name"
TOML
    note "gateway $name: id $id, share $share_name at $dir/shares/$share_name"
}

# add_two_way_share NAME SHARE: another share of gateway NAME, two-way (LAN writes are
# uploaded; the group's other gateways follow).
add_two_way_share() {
    local dir="$work/$1"
    mkdir -p "$dir/shares/$2"
    cat >>"$dir/agent.toml" <<TOML

[[share]]
name = "$2"
path = "$dir/shares/$2"
mode = "two_way"
settle_ms = 1000
TOML
    note "gateway $1: two-way share $2 at $dir/shares/$2"
}

# start_agent NAME: `sgw-agent run` of that gateway in the background (log in its directory).
declare -A agent_pid=()
start_agent() {
    local dir="$work/$1"
    "$agent" -c "$dir/agent.toml" run >"$dir/agent-run.log" 2>&1 &
    agent_pid[$1]=$!
    agent_pids+=("$!")
    sleep 0.5
    kill -0 "${agent_pid[$1]}" 2>/dev/null || fail "sgw-agent run of $1 exited at once; see $dir/agent-run.log"
}

# add_share_to_group NAME SHARE [GROUP]: once the agent has registered SHARE, add it to the
# group (default: $sync_id).
add_share_to_group() {
    local name="$1" share_name="$2" id="${gateway_id[$1]}" group="${3:-$sync_id}"
    for _ in $(seq 1 100); do
        sdk tea DescribeExpressSyncShares "{\"ExpressSyncIds\": \"$group\", \"IsExternal\": true}" |
            grep -q "\"ShareName\": \"$share_name\"" && break
        sleep 0.2
    done
    sdk rpc AddSharesToExpressSync \
        "{\"ExpressSyncId\": \"$group\", \"GatewayShares\": \"{\\\"$id\\\": \\\"$share_name\\\"}\"}" >/dev/null
    note "share $share_name of gateway $name added to group $group"
}

step "Adding gateway edge-01 (sgw-control gateway add) and configuring its agent"
add_gateway edge-01 photos
add_two_way_share edge-01 projects
note "config: $work/edge-01/agent.toml"
step "sgw-agent check-config --online"
"$agent" -c "$work/edge-01/agent.toml" check-config --online ||
    fail "check-config --online failed for edge-01"
step "Starting the agent: sgw-agent run ${dim}(log: $work/edge-01/agent-run.log)${reset}"
start_agent edge-01

step "Creating the express sync group with the official SDK (CreateExpressSync)"
sync_id=$(sdk tea CreateExpressSync \
    "{\"Name\": \"demo-sync\", \"BucketRegion\": \"us-east-1\", \"BucketName\": \"$bucket\", \"Description\": \"sgw-agent demo\"}" |
    "$python" -c 'import json,sys; print(json.load(sys.stdin)["ExpressSyncId"])')
[[ -n "$sync_id" ]] || fail "CreateExpressSync returned no ExpressSyncId"
note "group $sync_id on bucket $bucket (topic, queue and bucket notification provisioned)"
step "Adding the share to the group (AddSharesToExpressSync, classic RPC SDK)"
sync_start=$EPOCHREALTIME
add_share_to_group edge-01 photos

share="$work/edge-01/shares/photos"
compare() { peerctl compare-dir "$bucket" "$1" --exit-code; }
step "Mirroring: SyncProgress as the SDK shows it (DescribeExpressSyncShares)"
last=""
for _ in $(seq 1 600); do
    line=$(sdk tea DescribeExpressSyncShares "{\"ExpressSyncIds\": \"$sync_id\"}" |
        "$python" -c 'import json,sys
shares = json.load(sys.stdin)["Shares"]["Share"]
print(" ".join("%s:%s %s%%" % (s["ShareName"], s["ExpressSyncState"], s["SyncProgress"]) for s in shares))')
    [[ "$line" != "$last" ]] && note "$line   ${dim}($(since "$sync_start") s)${reset}"
    last="$line"
    [[ "$line" == *"MNSHealthy 100%"* ]] && break
    kill -0 "${agent_pid[edge-01]}" 2>/dev/null || fail "the agent exited; see $work/edge-01/agent-run.log"
    sleep 0.5
done
[[ "$last" == *"MNSHealthy 100%"* ]] || fail "the share did not reach MNSHealthy 100"
sync_secs=$(since "$sync_start")
note "full sync took $sync_secs s; the agent's own view:"
"$agent" -c "$work/edge-01/agent.toml" status | sed 's/^/      /' || true

if ! result=$(compare "$share"); then
    echo "$result" >&2
    fail "after the full sync the share does not match the bucket"
fi
note "share matches the bucket: $(json_field objects <<<"$result") objects"

# --- 5. live changes through events -------------------------------------------------------
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
    if result=$(compare "$share"); then converged=yes; break; fi
    awk -v t="$EPOCHREALTIME" -v d="$deadline" 'BEGIN { exit !(t < d) }' || break
    kill -0 "${agent_pid[edge-01]}" 2>/dev/null || break
    sleep 0.3
done
event_secs=$(since "$changed_at")
if [[ -n "$converged" ]]; then
    note "share followed the changes in $event_secs s"
else
    echo "$result" >&2
    echo "    last lines of $work/edge-01/agent-run.log:" >&2
    tail -n 20 "$work/edge-01/agent-run.log" >&2 || true
fi

step "sgw-agent status"
"$agent" -c "$work/edge-01/agent.toml" status || note "(status exited with $?)"

# --- 6. two gateways of one group exchange files -------------------------------------------
step "Two sites, one bucket: a second gateway (edge-02) and a group of two two-way shares"
peerctl make-bucket "$projects_bucket" >/dev/null
add_gateway edge-02 projects
# edge-02's only share is two-way as well.
sed -i 's/^path = "\(.*\)\/shares\/projects"$/&\nmode = "two_way"\nsettle_ms = 1000/' "$work/edge-02/agent.toml"
start_agent edge-02
projects_sync=$(sdk tea CreateExpressSync \
    "{\"Name\": \"demo-projects\", \"BucketRegion\": \"us-east-1\", \"BucketName\": \"$projects_bucket\"}" |
    "$python" -c 'import json,sys; print(json.load(sys.stdin)["ExpressSyncId"])')
add_share_to_group edge-01 projects "$projects_sync"
add_share_to_group edge-02 projects "$projects_sync"
for _ in $(seq 1 120); do
    healthy=$(sdk tea DescribeExpressSyncShares "{\"ExpressSyncIds\": \"$projects_sync\"}" |
        "$python" -c 'import json,sys
print(sum(s["ExpressSyncState"] == "MNSHealthy" for s in json.load(sys.stdin)["Shares"]["Share"]))')
    [[ "$healthy" == 2 ]] && break
    sleep 0.5
done
[[ "$healthy" == 2 ]] || fail "the two projects shares did not both reach MNSHealthy"
note "both projects shares are MNSHealthy in group $projects_sync"

# wait_for_file PATH TEXT SECONDS: until PATH holds exactly TEXT; prints the seconds taken.
wait_for_file() {
    local start=$EPOCHREALTIME
    for _ in $(seq 1 $(($3 * 10))); do
        if [[ -f "$1" && "$(cat "$1")" == "$2" ]]; then since "$start"; return 0; fi
        sleep 0.1
    done
    return 1
}
site_a="$work/edge-01/shares/projects"
site_b="$work/edge-02/shares/projects"
step "A LAN client at edge-01 saves plan.txt; edge-02 follows"
printf 'saved at branch A' >"$site_a/plan.txt"
a_to_b=$(wait_for_file "$site_b/plan.txt" "saved at branch A" 30) ||
    fail "plan.txt did not reach edge-02 (see $work/edge-02/agent-run.log)"
note "edge-02 has plan.txt after $a_to_b s (settle window 1 s, then upload, event, download)"
step "A LAN client at edge-02 edits it; edge-01 follows"
printf 'edited at branch B' >"$site_b/plan.txt"
b_to_a=$(wait_for_file "$site_a/plan.txt" "edited at branch B" 30) ||
    fail "the edit did not reach edge-01 (see $work/edge-01/agent-run.log)"
peerctl get "$projects_bucket" plan.txt --out "$work/plan-in-bucket.txt" >/dev/null
note "edge-01 has the edit after $b_to_a s; the bucket holds \"$(cat "$work/plan-in-bucket.txt")\""

# --- 6. stop everything -------------------------------------------------------------------
step "Stopping the agents (SIGTERM), sgw-control and the peer"
agent_exit=0
if kill -0 "${agent_pid[edge-02]}" 2>/dev/null; then
    kill -TERM "${agent_pid[edge-02]}"
    wait "${agent_pid[edge-02]}" || agent_exit=$?
fi
pid="${agent_pid[edge-01]}"
if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        note "still running after 20 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
fi
wait "$pid" || { code=$?; ((agent_exit)) || agent_exit=$code; }
agent_pids=()
note "agent exited with $agent_exit; status now says:"
"$agent" -c "$work/edge-01/agent.toml" status | head -2 | sed 's/^/      /' || true
for pid in "$control_pid" "$moto_pid"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
control_pid=""
moto_pid=""

# --- 7. summary ---------------------------------------------------------------------------
step "Summary"
note "objects in bucket : $(json_field objects <<<"$result")  (files in share: $(json_field files <<<"$result"))"
note "initial put       : $put_total objects"
note "full sync         : $sync_secs s"
note "events applied in : $event_secs s ${dim}(limit $event_wait_secs s)${reset}"
note "edge-01 -> edge-02 : $a_to_b s, edge-02 -> edge-01: $b_to_a s (two-way, one group)"
note "agent exits       : $agent_exit (after SIGTERM)"
note "total             : $(since "$demo_start") s"
note "work dir          : $work  (edge-01/{shares,state,agent.toml,agent-run.log}, control.log, moto.log)"
[[ -n "$converged" ]] || fail "the share did not match the bucket within $event_wait_secs s"
((agent_exit == 0)) || fail "sgw-agent run exited with $agent_exit after SIGTERM (expected 0)"
echo "${bold}demo OK${reset}"
