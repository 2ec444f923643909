#!/usr/bin/env bash
# Installs a built sgw-agent .deb on this (Debian, root) machine the way the README tells an
# operator to, checks the result, then upgrades, removes and purges it again:
#   install  -> system user, binary, example config as conffile parses, man page and sample
#               control.toml installed, units pass
#               systemd/check-units.sh --installed (verify + security score)
#   service  -> the README's path: credentials file 0640 root:sgw-agent, credentials_file and
#               a share in agent.toml, `sudo -u sgw-agent sgw-agent check-config` succeeds;
#               the same share read-only (what a missing ReadWritePaths= gives) is exit 78
#               naming the drop-in
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
# The man page the unit's Documentation= names, and the sample control.toml.
# (cargo-deb gzips pages under usr/share/man, as Debian policy wants.)
[[ -f /usr/share/man/man1/sgw-agent.1.gz ]] || fail "no /usr/share/man/man1/sgw-agent.1.gz"
cmp -s <(zcat /usr/share/man/man1/sgw-agent.1.gz) <(/usr/bin/sgw-agent help --man) ||
    fail "the installed man page is not the binary's help --man"
man -w sgw-agent >/dev/null || fail "man does not find sgw-agent(1)"
[[ -f /usr/share/doc/sgw-agent/examples/control.toml ]] ||
    fail "no /usr/share/doc/sgw-agent/examples/control.toml"
"$repo_root/systemd/check-units.sh" --installed

step "service path as the README documents it"
# The example configuration's share; created here (and removed at the end) only if missing.
share=/srv/shares/photos
created_share=""
if [[ ! -e "$share" ]]; then
    created_share="$share"
    [[ -e /srv/shares ]] || created_share="/srv/shares"
fi
cleanup_share() { [[ -z "$created_share" ]] || rm -rf "$created_share"; }
trap cleanup_share EXIT
# postinst applies tmpfiles.d only where systemd runs (debhelper's rule); elsewhere, as at boot:
[[ -d /run/systemd/system ]] || systemd-tmpfiles --create sgw-agent.conf
[[ "$(stat -c '%a %U %G' /var/lib/sgw-agent)" == "750 sgw-agent sgw-agent" ]] ||
    fail "the package did not create /var/lib/sgw-agent 0750 sgw-agent:sgw-agent"
# README "Install the Debian package", command by command (sudoedit writes into the file it
# is given, keeping its mode and owner, as this redirection does).
install -m 0640 -o root -g sgw-agent /dev/null /etc/sgw-agent/credentials
printf '[default]\naws_access_key_id = AKIDDEBCHECK\naws_secret_access_key = deb-check-secret\n' \
    >/etc/sgw-agent/credentials
sed -i 's|^# credentials_file = "/etc/sgw-agent/credentials"|credentials_file = "/etc/sgw-agent/credentials"|' \
    /etc/sgw-agent/agent.toml
grep -q '^credentials_file = "/etc/sgw-agent/credentials"$' /etc/sgw-agent/agent.toml ||
    fail "the example agent.toml has no credentials_file line to enable"
grep -q "^path = \"$share\"" /etc/sgw-agent/agent.toml || fail "the example share is not $share"
mkdir -p "$share"
chown -R sgw-agent:sgw-agent "$share"
# The boot-time tmpfiles.d snippet keeps exactly what the README created.
systemd-tmpfiles --create sgw-agent.conf
[[ "$(stat -c '%a %U %G' /etc/sgw-agent/credentials)" == "640 root sgw-agent" ]] ||
    fail "tmpfiles.d changed the credentials file to $(stat -c '%a %U %G' /etc/sgw-agent/credentials)"
as_service_user() {
    if command -v sudo >/dev/null; then
        sudo -u sgw-agent "$@"
    else
        runuser -u sgw-agent -- "$@" # what `sudo -u` does, on a machine without sudo
    fi
}
out="$(as_service_user sgw-agent check-config 2>&1)" || fail "check-config as sgw-agent failed: $out"
step "$out"
grep -q 'writable by user sgw-agent, credentials for key id AKIDDEBCHECK from /etc/sgw-agent/credentials' <<<"$out" ||
    fail "check-config did not read the credentials file as sgw-agent: $out"
! grep -q deb-check-secret <<<"$out" || fail "check-config printed the secret"
# A missing ReadWritePaths= is a read-only share under the unit: a private mount namespace
# with a read-only bind mount shows what the service would see.
if unshare -m true 2>/dev/null; then
    set +e
    out="$(unshare -m sh -c 'mount --bind -o ro "$1" "$1" && runuser -u sgw-agent -- sgw-agent check-config' sh "$share" 2>&1)"
    code=$?
    set -e
    [[ $code == 78 ]] || fail "check-config on a read-only share: exit $code, not 78: $out"
    grep -q "share \"photos\": $share is not writable by user sgw-agent (Read-only file system); under systemd add it to ReadWritePaths= in a drop-in" <<<"$out" ||
        fail "check-config on a read-only share does not name the drop-in: $out"
    step "read-only share: exit 78: $out"
else
    step "read-only share: skipped (no unshare -m here)"
fi
rm -f /etc/sgw-agent/credentials

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
[[ -d "$share" ]] || fail "purge removed the share directory $share"
step "OK: install, upgrade, remove and purge behave as documented"
