#!/bin/sh
# Build a Debian base image from Debian's own packages, for machines that cannot pull
# from an image registry: debootstrap a minimal bookworm with Python 3.11 and import it.
#   deploy/docker/debian-base.sh [TAG] [ARCH]     (needs root and debootstrap)
#     TAG   default picolm-base:bookworm
#     ARCH  a Debian architecture (amd64, arm64, armhf, ...); default this machine's.
#           Another architecture runs its packages' scripts under emulation: it needs
#           qemu-user-static and binfmt-support (with /proc/sys/fs/binfmt_misc mounted).
#   BUILD_TAG=picolm-build:bookworm deploy/docker/debian-base.sh ...
#           also makes, from the same root, an image with a C compiler and make (for the
#           Dockerfile's PicoLM stage, BUILD_IMAGE, when the build has no network).
# Then: make docker BASE_IMAGE=picolm-base:bookworm [BUILD_IMAGE=picolm-build:bookworm]
set -eu
tag="${1:-picolm-base:bookworm}"
arch="${2:-$(dpkg --print-architecture)}"
docker="${DOCKER:-docker}"
command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
case "$arch" in
    amd64) platform=linux/amd64 ;;
    arm64) platform=linux/arm64 ;;
    armhf) platform=linux/arm/v7 ;;
    armel) platform=linux/arm/v5 ;;
    i386) platform=linux/386 ;;
    *) platform=linux/$arch ;;
esac
# PyYAML publishes no wheel for 32-bit ARM: there the image's venv uses Debian's
# (python3-yaml, seen through --system-site-packages; see the Dockerfile's VENV_OPTIONS).
case "$arch" in
    armhf | armel) packages=python3,python3-venv,ca-certificates,python3-yaml ;;
    *) packages=python3,python3-venv,ca-certificates ;;
esac
root="$(mktemp -d)"
trap 'umount "$root/proc" 2>/dev/null || true; rm -rf --one-file-system "$root"' EXIT
debootstrap --arch="$arch" --variant=minbase --include="$packages" bookworm "$root"

# docker import records this machine's architecture whatever --platform says (Docker
# 20.10's daemon): write the image's own into its configuration, so that images built on
# it carry it too (and a Raspberry Pi's Docker runs them without a platform warning).
label() {
    [ "$arch" = "$(dpkg --print-architecture)" ] && return 0
    saved="$(mktemp -d)"
    "$docker" save "$1" | tar -C "$saved" -x
    python3 - "$saved" "$platform" <<'PYTHON'
import json, pathlib, sys
root, platform = pathlib.Path(sys.argv[1]), sys.argv[2].split("/")
(manifest,) = json.loads((root / "manifest.json").read_text())
config_path = root / manifest["Config"]
config = json.loads(config_path.read_text())
config["architecture"] = platform[1]
if len(platform) > 2:
    config["variant"] = platform[2]
config_path.write_text(json.dumps(config))
PYTHON
    tar -C "$saved" -c . | "$docker" load >/dev/null
    rm -rf "$saved"
}

import() {
    # Package lists, cached packages and documentation: not needed to run anything.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info
    tar -C "$root" -c . | "$docker" import --platform "$platform" \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV LANG=C.UTF-8" - "$1"
    label "$1"
    echo "built $1 ($platform)"
}
import "$tag"

if [ -n "${BUILD_TAG:-}" ]; then
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" apt-get update -qq
    chroot "$root" sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends gcc make libc6-dev >/dev/null'
    : >"$root/etc/resolv.conf"
    import "$BUILD_TAG"
fi
