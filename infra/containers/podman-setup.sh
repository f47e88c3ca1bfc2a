#!/usr/bin/env bash
# Install podman and its tools from Debian when missing (idempotent, needs root for apt).
# Usage: infra/containers/podman-setup.sh
# Then: export CONTAINERS_CONF=infra/containers/containers.conf (runc, ulimits this host allows).
set -euo pipefail
packages=(podman buildah runc debootstrap uidmap slirp4netns fuse-overlayfs)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
podman --version
