#!/usr/bin/env bash
# Installs a built sgw-agent .deb on this (Debian, root) machine the way the README tells an
# operator to, checks the result, then upgrades, removes and purges it again:
#   install  -> system user, binary, example config as conffile parses, units pass
#               systemd/check-units.sh --installed (verify + security score)
#   upgrade  -> reinstalling keeps a locally edited conffile
#   remove   -> binary gone, conffile and state kept
#   purge    -> conffile and /var/lib/sgw-agent gone; share directories and the user stay
# Refuses to run where sgw-agent is already installed (it would remove it at the end).
#
#   cross/deb-install-check.sh target/debian/sgw-agent_VERSION-1_amd64.deb
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deb="${1:?usage: cross/deb-install-check.sh PACKAGE.deb}"
fail() {
    echo "deb-install-check: $*" >&2
    exit 1
}
step() { echo "deb-install-check: $*"; }

[[ "$(id -u)" == 0 ]] || fail "needs root (it installs and purges the package)"
[[ -f "$deb" ]] || fail "no $deb"
[[ "$(dpkg-deb -f "$deb" Architecture)" == "$(dpkg --print-architecture)" ]] ||
    fail "$deb is not for this machine's architecture"
if dpkg-query -W -f='${db:Status-Status}' sgw-agent 2>/dev/null | grep -qx installed; then
    fail "sgw-agent is already installed here; not touching it"
fi
export DEBIAN_FRONTEND=noninteractive

step "install"
dpkg -i "$deb"
getent passwd sgw-agent >/dev/null || fail "no sgw-agent user after install"
step "user: $(getent passwd sgw-agent)"
[[ "$(/usr/bin/sgw-agent --version)" == "sgw-agent $(dpkg-deb -f "$deb" Version | cut -d- -f1)" ]] ||
    fail "/usr/bin/sgw-agent --version does not match the package version"
# The shipped example configuration parses (status needs nothing but the file).
/usr/bin/sgw-agent -c /etc/sgw-agent/agent.toml status >/dev/null ||
    fail "the packaged /etc/sgw-agent/agent.toml does not parse"
[[ -z "$(find /etc/systemd/system -name 'sgw-agent.service' 2>/dev/null)" ]] ||
    fail "the unit got enabled on install; it must wait until the config is edited"
"$repo_root/systemd/check-units.sh" --installed

step "upgrade keeps an edited conffile"
echo "# edited by the operator" >>/etc/sgw-agent/agent.toml
dpkg -i "$deb"
grep -q '^# edited by the operator$' /etc/sgw-agent/agent.toml || fail "reinstall lost the edited agent.toml"

step "remove"
mkdir -p /var/lib/sgw-agent/shares/example
echo state >/var/lib/sgw-agent/shares/example/marker
dpkg -r sgw-agent
[[ ! -e /usr/bin/sgw-agent ]] || fail "binary still there after remove"
[[ -f /etc/sgw-agent/agent.toml ]] || fail "remove deleted the conffile"
[[ -f /var/lib/sgw-agent/shares/example/marker ]] || fail "remove deleted the state"

step "purge"
dpkg --purge sgw-agent
[[ ! -e /etc/sgw-agent/agent.toml ]] || fail "purge left /etc/sgw-agent/agent.toml"
[[ ! -e /var/lib/sgw-agent ]] || fail "purge left /var/lib/sgw-agent"
getent passwd sgw-agent >/dev/null || fail "purge removed the system user (Debian keeps it)"
step "OK: install, upgrade, remove and purge behave as documented"
