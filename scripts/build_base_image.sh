#!/usr/bin/env bash
# Builds a minimal Debian + Python 3 base image locally, for machines that cannot pull from a registry.
#
# Real users start from nvcr.io/nvidia/tritonserver:<version>-py3 (the default of
# `compound deploy --target docker`); this script is for offline or air-gapped machines, where the
# image `compound` builds installs the tritonserver shipped in the nvidia-pytriton wheel on top of it.
#
#   scripts/build_base_image.sh [TAG]          # default TAG: compound-base:bookworm
#   compound deploy REPO --target docker --base-image compound-base:bookworm --network host
#
# Cached twice: an existing image with TAG is reused as is, and the debootstrap root file system is
# kept as a tarball (and the downloaded .debs) under ${COMPOUND_CACHE:-~/.cache/compound}, so a pruned
# image re-imports in seconds.
# Environment: SUITE (bookworm: its python3 is 3.11, matching a python-backend stub in the wheel;
# another suite needs PACKAGES naming its libpython3.X),
# MIRROR (a Debian mirror), HOST_CA (1: copy this host's CA bundle into the image, so pip works behind
# a TLS-inspecting proxy; 0: keep Debian's), REBUILD (1: ignore both caches).
# Needs root, debootstrap (apt-get install -y debootstrap) and a running Docker engine.
set -euo pipefail

TAG="${1:-compound-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
HOST_CA="${HOST_CA:-1}"
REBUILD="${REBUILD:-0}"
CACHE_DIR="${COMPOUND_CACHE:-${HOME}/.cache/compound}"
TARBALL="${CACHE_DIR}/rootfs-${SUITE}.tar"
# libpython3.11: the python-backend stub in the wheel links the shared libpython of its Python version.
# passwd: useradd, with which the image compound builds on this base adds the unprivileged user it runs as.
PACKAGES="${PACKAGES:-python3,python3-venv,python3-pip,libpython3.11,ca-certificates,passwd}"

die() { echo "build_base_image: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker engine is reachable: start dockerd (or set DOCKER_HOST)"

# The image compound builds on this base runs as uid 1000, which must be able to reach everything.
runs_unprivileged() { docker run --rm --network none --user 1000:1000 "$1" /bin/true >/dev/null 2>&1; }

if [[ "$REBUILD" != 1 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    if runs_unprivileged "$TAG"; then
        echo "cached: $TAG"
        exit 0
    fi
    # An earlier version of this script left / as mktemp's 0700: rebuild (the .debs stay cached).
    echo "cached $TAG cannot run as a non-root user: rebuilding it"
    REBUILD=1
fi

if [[ "$REBUILD" == 1 || ! -s "$TARBALL" ]]; then
    [[ $(id -u) == 0 ]] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install -y debootstrap"
    mkdir -p "$CACHE_DIR"
    ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/compound-rootfs.XXXXXX")"
    # `|| true`: under set -e a failing umount (nothing is mounted) would end the trap there, skip
    # the clean-up and turn a successful build into a failed exit.
    trap 'umount -R "$ROOTFS/proc" "$ROOTFS/sys" 2>/dev/null || true; rm -rf "$ROOTFS"' EXIT
    echo "debootstrap $SUITE from $MIRROR into $ROOTFS ..."
    mkdir -p "$CACHE_DIR/debs"
    debootstrap --variant=minbase --cache-dir="$CACHE_DIR/debs" --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR"
    if [[ "$HOST_CA" == 1 && -s /etc/ssl/certs/ca-certificates.crt ]]; then
        cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    fi
    chmod 0755 "$ROOTFS"  # it becomes the image's /: mktemp made it 0700, which locks out every other user
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
        "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
    tar -C "$ROOTFS" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi

echo "importing $TARBALL as $TAG ..."
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$TARBALL" "$TAG" >/dev/null
runs_unprivileged "$TAG" || die "$TAG was imported but uid 1000 cannot run /bin/true in it (permissions of $TARBALL?)"
docker image inspect "$TAG" --format "built: {{index .RepoTags 0}} ({{.Size}} bytes)"
