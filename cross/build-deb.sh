#!/usr/bin/env bash
# Builds the Debian packages with cargo-deb and checks what is in them.
#
#   cross/build-deb.sh [amd64] [arm64]     (default: both)
#
# amd64 is built with the machine's Rust toolchain, arm64 with the docker-free cross setup
# (cross/build-release.sh). Each .deb is checked: control fields, the file list (binary of the
# right architecture, units, sysusers/tmpfiles, conffile, docs), the maintainer scripts
# (system user created, unit registered, not started on a first install), and lintian when it
# is installed (errors fail; warnings are shown). Output: target/debian/sgw-agent_*.deb
#
# Env: SGW_CARGO_DEB_VERSION  cargo-deb version installed when it is missing (default 3.8.0)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
arches=("$@")
((${#arches[@]})) || arches=(amd64 arm64)
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

fail() {
    echo "build-deb: $*" >&2
    exit 1
}

[[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo-deb >/dev/null; then
    version="${SGW_CARGO_DEB_VERSION:-3.8.0}"
    echo "build-deb: installing cargo-deb $version from crates.io"
    cargo install cargo-deb --locked --version "$version"
fi

# The Debian changelog's top entry must be this crate version (lintian and dpkg read it).
crate_version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
changelog_version="$(sed -n '1s/^sgw-agent (\(.*\)-[0-9]*) .*/\1/p' systemd/debian/changelog)"
[[ "$crate_version" == "$changelog_version" ]] ||
    fail "systemd/debian/changelog is for $changelog_version, the crate is $crate_version: add an entry"

check_deb() {
    local deb="$1" arch="$2" elf_machine="$3"
    echo "--- $deb"
    dpkg-deb -I "$deb"
    local listing
    listing="$(dpkg-deb -c "$deb")"
    echo "$listing"
    for path in ./usr/bin/sgw-agent ./usr/lib/systemd/system/sgw-agent.service \
        ./usr/lib/sysusers.d/sgw-agent.conf ./usr/lib/tmpfiles.d/sgw-agent.conf \
        ./etc/sgw-agent/agent.toml ./usr/share/doc/sgw-agent/copyright \
        ./usr/share/doc/sgw-agent/changelog.Debian.gz ./usr/share/doc/sgw-agent/README.md \
        ./usr/share/doc/sgw-agent/examples/agent.toml ./usr/share/doc/sgw-agent/examples/control.toml \
        ./usr/share/man/man1/sgw-agent.1.gz; do
        grep -q " $path\$" <<<"$listing" || fail "$deb lacks $path"
    done
    [[ "$(dpkg-deb -f "$deb" Architecture)" == "$arch" ]] || fail "$deb is not Architecture: $arch"
    local x
    x="$(mktemp -d)"
    dpkg-deb -x "$deb" "$x/root"
    dpkg-deb -e "$deb" "$x/control"
    # e_machine at offset 18 of the ELF header: the binary is for the package's architecture.
    [[ "$(od -An -tx1 -j18 -N2 "$x/root/usr/bin/sgw-agent" | tr -d ' ')" == "$elf_machine" ]] ||
        fail "$deb: usr/bin/sgw-agent is not a $arch binary"
    cmp -s "$x/root/usr/lib/systemd/system/sgw-agent.service" systemd/sgw-agent.service ||
        fail "$deb: the packaged unit differs from systemd/sgw-agent.service"
    grep -qx '/etc/sgw-agent/agent.toml' "$x/control/conffiles" || fail "$deb: agent.toml is not a conffile"
    grep -q 'systemd-sysusers .*sgw-agent.conf' "$x/control/postinst" || fail "$deb: postinst creates no system user"
    grep -q 'deb-systemd-helper update-state sgw-agent.service' "$x/control/postinst" || fail "$deb: postinst does not register the unit"
    if grep -Eq 'deb-systemd-invoke (start|restart) ' "$x/control/postinst"; then
        fail "$deb: postinst starts the service before it is configured"
    fi
    grep -q 'rm -rf /var/lib/sgw-agent' "$x/control/postrm" || fail "$deb: purge keeps the state"
    echo "build-deb: $deb: contents and maintainer scripts as expected"
    rm -rf "$x"
    if command -v lintian >/dev/null; then
        # As root lintian warns about running as root; that line is noise here.
        lintian --fail-on error "$deb" 2> >(grep -v 'running with root privileges' >&2)
        echo "build-deb: lintian: no errors"
    else
        echo "build-deb: lintian not installed; skipped (apt-get install lintian)"
    fi
}

for arch in "${arches[@]}"; do
    case "$arch" in
    amd64)
        cargo build --release --locked -p sgw-agent --bin sgw-agent
        cargo deb -p sgw-agent --no-build --output "$target_dir/debian/"
        check_deb "$target_dir/debian/sgw-agent_${crate_version}-1_amd64.deb" amd64 3e00
        ;;
    arm64)
        cross/build-release.sh
        (
            # In a subshell: env.sh points RUSTC at Debian's compiler, for this build only.
            # shellcheck source=cross/env.sh
            source cross/env.sh
            cargo deb -p sgw-agent --no-build --target "$SGW_CROSS_TARGET" --output "$target_dir/debian/"
        )
        check_deb "$target_dir/debian/sgw-agent_${crate_version}-1_arm64.deb" arm64 b700
        ;;
    *) fail "unknown architecture $arch (amd64, arm64)" ;;
    esac
done
