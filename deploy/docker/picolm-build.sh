#!/bin/sh
# Compile PicoLM inside the image build (the Dockerfile's picolm stage), for the
# architecture the build runs on, and install it as /usr/local/bin/picolm.
#
# Source: a checkout copied into the build context (make docker PICOLM_SRC=/path puts it
# in build/picolm-src/, which arrives here as $1), else PICOLM_GIT at PICOLM_REF (a
# branch, tag or commit; default the repository's default branch), fetched with git.
#
# PICOLM_TARGET: a target of PicoLM's Makefile; by default the one for this
# architecture: arm64 "pi" (ARMv8-A with NEON), 32-bit ARM "pi-arm32" (ARMv6 with VFP,
# which runs on every Raspberry Pi; its Makefile names a cross compiler, the native gcc
# is used here), x86-64 "picolm" (the Makefile's plain build: -O2 for any x86-64 CPU,
# with the SSE2 code PicoLM has for it). "native" tunes for the CPU of the machine that
# builds the image (-march=native), and the binary may then stop with "Illegal
# instruction" on an older CPU: choose it only for an image that runs where it is built.
set -eu
src="${1:-/picolm-src}"
work=/tmp/picolm

need=""
command -v make >/dev/null || need="$need make"
command -v gcc >/dev/null || need="$need gcc libc6-dev"
if [ ! -f "$src/picolm/Makefile" ] && [ ! -f "$src/Makefile" ]; then
    command -v git >/dev/null || need="$need git ca-certificates"
fi
if [ -n "$need" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

mkdir -p "$work"
if [ -f "$src/picolm/Makefile" ]; then
    cp -R "$src/picolm/." "$work/"
    echo "PicoLM: the checkout in the build context"
elif [ -f "$src/Makefile" ]; then
    cp -R "$src/." "$work/"
    echo "PicoLM: the checkout in the build context"
else
    : "${PICOLM_GIT:?no PicoLM checkout in the build context and no PICOLM_GIT}"
    git init -q /tmp/picolm-git
    git -C /tmp/picolm-git fetch -q --depth 1 "$PICOLM_GIT" "${PICOLM_REF:-HEAD}"
    git -C /tmp/picolm-git checkout -q FETCH_HEAD
    echo "PicoLM: $PICOLM_GIT ${PICOLM_REF:-(default branch)} at $(git -C /tmp/picolm-git rev-parse HEAD)"
    cp -R /tmp/picolm-git/picolm/. "$work/"
fi

arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
target="${PICOLM_TARGET:-}"
cc=gcc
if [ -z "$target" ]; then
    case "$arch" in
        arm64 | aarch64) target=pi ;;
        armhf | armel | arm*) target=pi-arm32 ;;
        riscv64) target=riscv ;;
        *) target=picolm ;;
    esac
fi
case "$target" in
    # Debian's armhf gcc makes Thumb-2 code by default, which ARMv6 lacks (and hard-float
    # Thumb-1 code does not exist): ARM instructions.
    pi-arm32) cc="gcc -marm" ;;
esac
echo "PicoLM: make $target for $arch"
make -C "$work" clean >/dev/null
make -C "$work" "$target" CC="$cc"
install -m 0755 "$work/picolm" /usr/local/bin/picolm
# It runs: with no arguments it prints its usage and exits with status 1.
if /usr/local/bin/picolm 2>&1 | grep -q "Usage:"; then
    echo "PicoLM: installed /usr/local/bin/picolm"
else
    echo "PicoLM: the binary does not run" >&2
    exit 1
fi
