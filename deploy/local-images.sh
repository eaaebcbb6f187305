#!/bin/sh
# Stand-in base images built from Debian packages, then the application image on them, for a
# host that reaches Debian's mirror and a package index but no container registry (where
# `FROM python:3.11-slim-bookworm` and `redis:7.4` cannot be pulled). With podman:
#
#   deploy/local-images.sh [WORKDIR]     # default WORKDIR: /tmp/cascade-images
#
# makes
#   localhost/python:3.11-slim-bookworm  Debian bookworm's python3 (3.11) with venv, as `python`
#   localhost/redis:7                    Debian bookworm's redis-server
#   localhost/cascade-gateway:local      ../Dockerfile built on the first
# and the compose file takes them as
#   PYTHON_IMAGE=localhost/python:3.11-slim-bookworm REDIS_IMAGE=localhost/redis:7 \
#   CASCADE_IMAGE=localhost/cascade-gateway:local
#
# Everything that depends on this host is a flag here, never in the Dockerfile or the compose
# file: the host network during the build, this host's CA bundle and pip configuration mounted
# read-only (a package index behind a TLS-intercepting proxy needs both), and the podman
# settings that work on a VM with cgroups in hybrid mode (runc, cgroupfs, no default ulimits).
#
#   MIRROR        Debian mirror for debootstrap (default: the one apt is configured with)
#   PIP_CONF      pip configuration mounted at /etc/pip.conf during the build (default: this
#                 host's pip config, when there is one)
#   WHEELS        a directory of wheels mounted at the same path during the build (e.g. the
#                 torch CPU wheel a host keeps on disk), for a pip.conf whose find-links names it
#   TORCH_INDEX_URL  passed to the build (default: empty, pip's configured indexes)
set -eu

work=${1:-/tmp/cascade-images}
root=$(cd "$(dirname "$0")/.." && pwd)
mirror=${MIRROR:-$(grep -hoE 'https?://deb\.debian\.org/debian/?' /etc/apt/sources.list.d/* \
    /etc/apt/sources.list 2>/dev/null | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$work"

conf="$work/containers.conf"
printf '[containers]\ndefault_ulimits = []\n' >"$conf"
export CONTAINERS_CONF="$conf"
podman() { command podman --runtime "$(command -v runc)" --cgroup-manager=cgroupfs "$@"; }

# one image from debootstrap's minimal system plus PACKAGES (about 40 s each)
base_image() {
    tag=$1
    packages=$2
    if podman image exists "$tag"; then
        echo "local-images: $tag exists"
        return
    fi
    echo "local-images: $tag from Debian bookworm + $packages"
    rootfs="$work/rootfs-$(echo "$tag" | tr '/:' '__')"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" \
        >"$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log"; exit 1; }
    rm -rf "$rootfs/var/lib/apt/lists"/* "$rootfs/var/cache/apt"/*.bin
    tar -C "$rootfs" -cf "$rootfs.tar" .
    podman import "$rootfs.tar" "$tag" >/dev/null
    rm -rf "$rootfs" "$rootfs.tar"
}

base_image localhost/python:3.11-slim-bookworm python3,python3-venv,python-is-python3,ca-certificates
base_image localhost/redis:7 redis-server

mounts="-v /etc/ssl/certs:/etc/ssl/certs:ro"
pip_conf=${PIP_CONF:-}
if [ -z "$pip_conf" ]; then
    for f in /etc/pip.conf /etc/xdg/pip/pip.conf "${HOME:-/root}/.config/pip/pip.conf"; do
        [ -f "$f" ] && pip_conf=$f && break
    done
fi
# a host pip.conf may name files only the host has (a constraints file, a local index): keep
# what a build can use, and point find-links at WHEELS
printf '[global]\n' >"$work/pip.conf"
if [ -n "$pip_conf" ]; then
    grep -vE '^\s*(\[global\]|constraint|extra-index-url|find-links)\s*' "$pip_conf" >>"$work/pip.conf" || true
fi
if [ -n "${WHEELS:-}" ]; then
    printf 'find-links = %s\n' "$WHEELS" >>"$work/pip.conf"
    mounts="$mounts -v $WHEELS:$WHEELS:ro"
fi
mounts="$mounts -v $work/pip.conf:/etc/pip.conf:ro"

echo "local-images: building localhost/cascade-gateway:local (llama.cpp compiles: minutes)"
# shellcheck disable=SC2086  # $mounts is a list of flags
# --format docker: the OCI image format has no HEALTHCHECK, and podman's default drops it
podman build --format docker --network host $mounts \
    --build-arg PYTHON_IMAGE=localhost/python:3.11-slim-bookworm \
    --build-arg TORCH_INDEX_URL="${TORCH_INDEX_URL:-}" \
    -t localhost/cascade-gateway:local -f "$root/Dockerfile" "$root"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'localhost/(python|redis|cascade-gateway)'
