#!/usr/bin/env bash
# Lets the kernel run aarch64 programs through qemu-aarch64 (binfmt_misc), which the test run
# under qemu-user needs: cargo's runner starts each *test binary* under qemu, but the
# integration tests then start the aarch64 agent themselves (and the crash test re-executes
# its own binary), and those plain execve()s only work with a binfmt handler.
#
#   cross/binfmt.sh ensure AARCH64_BINARY   ok if AARCH64_BINARY runs; else register a handler
#                                           (root), print "registered" and check again
#   cross/binfmt.sh remove                  drop the handler this script registered
#
# The handler is registered without -L / QEMU_LD_PREFIX (see the trap in cross/env.sh), with
# Debian's qemu-user-binfmt magic for aarch64 ELF executables. A machine that already has a
# handler (qemu-user-binfmt, qemu-user-static) is left as it is.
set -euo pipefail

name=sgw-qemu-aarch64
binfmt=/proc/sys/fs/binfmt_misc
magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'

runs() {
    "$1" --version >/dev/null 2>&1
}

case "${1:-}" in
ensure)
    binary="${2:?usage: cross/binfmt.sh ensure AARCH64_BINARY}"
    [[ -x "$binary" ]] || { echo "binfmt: no executable at $binary" >&2; exit 1; }
    if runs "$binary"; then
        echo "binfmt: aarch64 programs already run on this machine"
        exit 0
    fi
    if [[ "$(id -u)" != 0 ]]; then
        echo "binfmt: $binary does not run here and only root can register qemu-aarch64:" >&2
        echo "  sudo apt-get install qemu-user-binfmt   (or run this script as root)" >&2
        exit 1
    fi
    interpreter="$(command -v qemu-aarch64)" || { echo "binfmt: no qemu-aarch64" >&2; exit 1; }
    if [[ ! -e "$binfmt/register" ]]; then
        mount -t binfmt_misc binfmt_misc "$binfmt"
    fi
    [[ -e "$binfmt/$name" ]] && echo -1 >"$binfmt/$name"
    printf ':%s:M::%s:%s:%s:\n' "$name" "$magic" "$mask" "$interpreter" >"$binfmt/register"
    echo "registered"
    if ! runs "$binary"; then
        echo "binfmt: registered $name but $binary still does not run" >&2
        exit 1
    fi
    ;;
remove)
    if [[ -e "$binfmt/$name" ]]; then
        echo -1 >"$binfmt/$name"
        echo "binfmt: removed $name"
    fi
    ;;
*)
    echo "usage: cross/binfmt.sh ensure AARCH64_BINARY | remove" >&2
    exit 2
    ;;
esac
