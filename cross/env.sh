# shellcheck shell=bash
# Source this for the docker-free aarch64 build: Debian's rustc-web (which ships the aarch64
# std; rustup's toolchain here has none and cannot fetch one), the GNU cross linker, and
# qemu-user as the test runner.  `source cross/env.sh && "$SGW_CARGO" build --target "$SGW_CROSS_TARGET"`
#
# Trap (DESIGN.md): never run qemu-aarch64 with `-L /usr/aarch64-linux-gnu` (nor set
# QEMU_LD_PREFIX) once libc6:arm64 is installed: mixing that prefix's loader with the multiarch
# libc makes every program that starts a thread spin forever in pthread_create.

export SGW_CROSS_TARGET=aarch64-unknown-linux-gnu
# Debian's cargo and rustc, whatever rustup put first on PATH.
export SGW_CARGO=/usr/bin/cargo
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# ring compiles C and assembly for the target.
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
unset QEMU_LD_PREFIX

# Prints what is missing for the docker-free cross build; returns non-zero if anything is.
sgw_cross_missing() {
    local missing=()
    [[ -x /usr/bin/rustc && -x /usr/bin/cargo ]] || missing+=(rustc-web cargo-web)
    [[ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib ]] || missing+=(libstd-rust-web-dev:arm64)
    command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
    [[ -f /usr/aarch64-linux-gnu/include/stdio.h ]] || missing+=(libc6-dev-arm64-cross)
    # The runtime loader qemu-aarch64 finds without -L (multiarch libc6:arm64).
    [[ -e /lib/ld-linux-aarch64.so.1 ]] || missing+=(libc6:arm64)
    command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
    if ((${#missing[@]})); then
        echo "${missing[*]}"
        return 1
    fi
}
