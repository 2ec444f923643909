#!/usr/bin/env bash
# Creates <repo>/.venv with the peer servers the real-peer tests need (moto[server] + boto3,
# pinned in tests/peer/requirements.txt). Idempotent: quiet and fast when already set up.
#
# Env: SGW_PYTHON  interpreter used to create the venv (default: python3)
#      SGW_TEST_VENV  venv location (default: <repo>/.venv), the same variable the tests read
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SGW_TEST_VENV:-$repo_root/.venv}"
requirements="$repo_root/tests/peer/requirements.txt"
python="${SGW_PYTHON:-python3}"
log_dir="$repo_root/target/peer-logs"
log="$log_dir/setup-peer.log"

fail() {
    echo "setup-peer: $*" >&2
    exit 1
}

[[ -f "$requirements" ]] || fail "missing $requirements"
command -v "$python" >/dev/null || fail "no '$python' on PATH (install python3, or set SGW_PYTHON)"
mkdir -p "$log_dir"
: >"$log"

# Two runs at once (parallel CI jobs, a demo next to a test run) must not build the venv twice.
if command -v flock >/dev/null; then
    exec 9>"$log_dir/setup-peer.lock"
    flock 9
fi

# Prints nothing and succeeds when every `name==version` pin is installed and moto_server exists.
pins_satisfied() {
    [[ -x "$venv/bin/python" && -x "$venv/bin/moto_server" ]] || return 1
    "$venv/bin/python" - "$requirements" <<'PY' >>"$log" 2>&1
import re, sys
from importlib.metadata import version, PackageNotFoundError
missing = []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line)
    if not m:
        sys.exit(f"unsupported requirement line (pin with ==): {line}")
    name, _, wanted = m.groups()
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != wanted:
        missing.append(f"{name}: have {have}, want {wanted}")
if missing:
    print("pins not satisfied:", *missing, sep="\n  ")
    sys.exit(1)
PY
}

venv_works() {
    [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -m pip --version >/dev/null 2>&1
}

create_venv() {
    rm -rf "$venv"
    "$python" -m venv "$venv" >>"$log" 2>&1
}

if ! venv_works; then
    if ! create_venv; then
        # Debian ships venv/ensurepip separately; only root can fix that here.
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            echo "setup-peer: python3 -m venv failed; installing python3-venv with apt-get" >&2
            export DEBIAN_FRONTEND=noninteractive
            { apt-get update -q && apt-get install -y -q python3-venv; } >>"$log" 2>&1 ||
                { tail -n 30 "$log" >&2; fail "apt-get install python3-venv failed (log: $log)"; }
            create_venv || { tail -n 30 "$log" >&2; fail "python3 -m venv still fails (log: $log)"; }
        else
            tail -n 30 "$log" >&2
            fail "'$python -m venv' failed; install python3-venv (apt-get install python3-venv) and rerun"
        fi
    fi
fi

if pins_satisfied; then
    exit 0
fi

if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$requirements" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "pip install -r tests/peer/requirements.txt failed (full log: $log)"
fi

pins_satisfied || { tail -n 20 "$log" >&2; fail "installed, but the pins are still not satisfied (log: $log)"; }
