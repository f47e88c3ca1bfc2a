#!/bin/sh
# Entrypoint of the BioEngine service images: `entrypoint.sh COMMAND [FLAGS...]` runs COMMAND
# (bioengine-gateway, bioengine-cluster, ...) as PID 1 with the flags given to the container.
# Every flag is also a BIOENGINE_* variable (see `podman run IMAGE --help`). The one addition:
# BIOENGINE_TOKEN_FILE, a file holding the token (a mounted secret), read into BIOENGINE_TOKEN.
set -eu
if [ -n "${BIOENGINE_TOKEN_FILE:-}" ] && [ -z "${BIOENGINE_TOKEN:-}" ]; then
  BIOENGINE_TOKEN=$(cat "$BIOENGINE_TOKEN_FILE")
  export BIOENGINE_TOKEN
fi
exec "$@"
