#!/usr/bin/env bash
# Build the base image of every BioEngine image without a registry:
#   layer 1: a Debian 12 (bookworm) minbase rootfs made with debootstrap, imported as
#            localhost/bioengine-debian:bookworm;
#   layer 2: python3 (3.11, Debian's) and ca-certificates -> localhost/bioengine-base:bookworm.
# Cached: nothing is done when the image exists (--force rebuilds it); the rootfs tarball is kept
# under ${XDG_CACHE_HOME:-~/.cache}/bioengine/ so a rebuild skips debootstrap.
# The Debian mirror is the one apt uses on this host (override with BIOENGINE_DEBIAN_MIRROR).
set -euo pipefail
cd "$(dirname "$0")"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/containers.conf}"

BASE=localhost/bioengine-base:bookworm
ROOTFS_IMAGE=localhost/bioengine-debian:bookworm
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/bioengine"
TARBALL="$CACHE/debian-bookworm-minbase.tar"

force=0
[[ "${1:-}" == "--force" ]] && force=1

if [[ $force == 0 ]] && podman image exists "$BASE"; then
  echo "$BASE exists (use --force to rebuild)"
  exit 0
fi

mirror() {
  if [[ -n "${BIOENGINE_DEBIAN_MIRROR:-}" ]]; then echo "$BIOENGINE_DEBIAN_MIRROR"; return; fi
  local found
  found=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)
  [[ -z "$found" ]] && found=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1 || true)
  echo "${found:-http://deb.debian.org/debian}"
}

started=$SECONDS
if [[ $force == 1 || ! -s "$TARBALL" ]]; then
  command -v debootstrap >/dev/null || { echo "debootstrap is needed: apt-get install debootstrap" >&2; exit 1; }
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "--- debootstrap bookworm minbase from $(mirror)"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$(mirror)" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # No apt lists or package cache in the image.
  rm -rf "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/cache/apt/archives/*.deb
  tar -C "$work/rootfs" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
  echo "--- rootfs tarball cached in $TARBALL ($((SECONDS - started)) s)"
fi

podman import --quiet "$TARBALL" "$ROOTFS_IMAGE" >/dev/null
echo "--- imported $ROOTFS_IMAGE ($((SECONDS - started)) s)"
podman build --quiet --format docker --network host -t "$BASE" -f Containerfile.base . >/dev/null
echo "--- built $BASE in $((SECONDS - started)) s: $(podman image inspect "$BASE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
