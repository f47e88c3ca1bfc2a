#!/usr/bin/env bash
# Save the tested OCI images as docker-archive tarballs, the bootstrap of infra/apptainer/*.def:
#   infra/apptainer/save-images.sh [NAME...]      (default: every image a .def uses)
# NAME is a .def's name (gateway-svc cluster-svc apps-svc datasets-svc ray-worker); the image is
# localhost/bioengine-NAME:latest (infra/containers/build.sh), the archive
# ${BIOENGINE_IMAGE_ARCHIVES:-infra/apptainer/archives}/NAME.tar, where the .def files look for it.
# Copy the repository with its archives to a machine with Apptainer and build there, from the
# repository root: `apptainer build NAME.sif infra/apptainer/NAME.def`.
# Prints each archive's size.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/../containers/containers.conf}"
out="${BIOENGINE_IMAGE_ARCHIVES:-$here/archives}"

ALL=()
for def in "$here"/*.def; do ALL+=("$(basename "$def" .def)"); done
names=("$@")
[[ ${#names[@]} == 0 ]] && names=("${ALL[@]}")
for name in "${names[@]}"; do
  [[ -f "$here/$name.def" ]] || { echo "unknown image '$name' (one of: ${ALL[*]})" >&2; exit 2; }
  image="localhost/bioengine-$name:latest"
  podman image exists "$image" || { echo "$image is missing: build it with infra/containers/build.sh $name" >&2; exit 1; }
done

mkdir -p "$out"
printf '%-44s %10s\n' ARCHIVE "SIZE (MB)"
for name in "${names[@]}"; do
  archive="$out/$name.tar"
  rm -f "$archive.partial"
  podman save --quiet --format docker-archive -o "$archive.partial" "localhost/bioengine-$name:latest"
  mv "$archive.partial" "$archive"
  printf '%-44s %10d\n' "$archive" "$(( $(stat -c %s "$archive") / 1000000 ))"
done
