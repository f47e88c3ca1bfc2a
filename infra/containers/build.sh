#!/usr/bin/env bash
# Build the BioEngine images with podman: `infra/containers/build.sh [NAME...]`
# (default: all). NAME is one of: hypha-server gateway-svc cluster-svc apps-svc datasets-svc
# ray-worker; the image is localhost/bioengine-NAME:latest. Builds the base image first when it
# is missing (base.sh). Prints each image's build time and size.
# Unchanged steps come from podman's layer cache; uv's download cache is a podman cache mount, so
# a rebuild after a source change downloads nothing. `--format docker`: OCI images drop HEALTHCHECK.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

ALL=(hypha-server gateway-svc cluster-svc apps-svc datasets-svc ray-worker)
names=("$@")
[[ ${#names[@]} == 0 ]] && names=("${ALL[@]}")
for name in "${names[@]}"; do
  [[ -f "$here/$name.Containerfile" ]] || { echo "unknown image '$name' (one of: ${ALL[*]})" >&2; exit 2; }
done

"$here/base.sh"

uv_bin="$(PATH="$PATH:$HOME/.local/bin" command -v uv || true)"
[[ -n "$uv_bin" ]] || { echo "uv is needed on the host (pip install uv): it is copied into the build stage" >&2; exit 1; }

# The build context: the sources uv needs (no virtualenvs, caches, tests or .git), uv itself,
# the host's CA bundle (for the build stage's downloads only) and this folder's scripts.
# Always the same directory: podman's layer cache misses when the context's path changes.
context="${XDG_CACHE_HOME:-$HOME/.cache}/bioengine/build-context"
rm -rf "$context"
mkdir -p "$context/workspace"
tar -C "$root" -cf - --exclude=.venv --exclude=node_modules --exclude=__pycache__ --exclude='*.pyc' --exclude=tests \
    --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache \
    pyproject.toml uv.lock libs services infra/hypha-server | tar -C "$context/workspace" -xf -
cp -p "$uv_bin" "$context/uv"
cp -p "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$context/host-ca.crt"
cp -p "$here"/entrypoint.sh "$here"/healthcheck.py "$here"/mint-tokens.py "$here"/server-entrypoint.sh "$context/"

printf '%-34s %10s %10s\n' IMAGE "BUILD (s)" "SIZE (MB)"
for name in "${names[@]}"; do
  image="localhost/bioengine-$name:latest"
  started=$EPOCHREALTIME
  if ! podman build --quiet --format docker --network host --layers -t "$image" -f "$here/$name.Containerfile" \
      "$context" >"$context/build.log" 2>&1; then
    cat "$context/build.log" >&2
    echo "building $image failed" >&2
    exit 1
  fi
  seconds=$(awk "BEGIN {print $EPOCHREALTIME - $started}")
  size=$(podman image inspect "$image" --format '{{.Size}}')
  printf '%-34s %10.1f %10.0f\n' "$image" "$seconds" "$((size / 1000000))"
done
# No `podman image prune` here: the untagged intermediate layers are the build cache.
