#!/bin/sh
# Build a Debian base image from Debian's own packages, for machines that cannot pull
# from an image registry: debootstrap a minimal bookworm with Python 3.11 and import it.
#   deploy/docker/debian-base.sh [TAG]        (default picolm-base:bookworm; needs root)
# Then: make docker BASE_IMAGE=picolm-base:bookworm
set -eu
tag="${1:-picolm-base:bookworm}"
docker="${DOCKER:-docker}"
command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
root="$(mktemp -d)"
trap 'rm -rf --one-file-system "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root"
# Package lists, cached packages and documentation: not needed to run anything.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info
tar -C "$root" -c . | "$docker" import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" - "$tag"
echo "built $tag"
