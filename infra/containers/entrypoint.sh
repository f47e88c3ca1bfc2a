#!/bin/sh
# Entrypoint of the BioEngine service images: `entrypoint.sh COMMAND [FLAGS...]` runs COMMAND
# (bioengine-gateway, bioengine-cluster, ...) as PID 1 with the flags given to the container.
# Every flag is also a BIOENGINE_* variable (see `podman run IMAGE --help`). Two additions:
# BIOENGINE_TOKEN_FILE, a file holding the token (a mounted secret), read into BIOENGINE_TOKEN;
# BIOENGINE_WAIT_FOR_SERVER=SECONDS, wait up to that long for the Hypha server at
# BIOENGINE_SERVER_URL to answer its readiness check before starting (a service exits when the
# server is unreachable at start; compose starts them all together).
set -eu
if [ -n "${BIOENGINE_TOKEN_FILE:-}" ] && [ -z "${BIOENGINE_TOKEN:-}" ]; then
  BIOENGINE_TOKEN=$(cat "$BIOENGINE_TOKEN_FILE")
  export BIOENGINE_TOKEN
fi
if [ -n "${BIOENGINE_WAIT_FOR_SERVER:-}" ]; then
  python3 - <<'PY'
import os, sys, time, urllib.request
url = os.environ.get("BIOENGINE_SERVER_URL", "").rstrip("/")
if not url:
    sys.exit("BIOENGINE_WAIT_FOR_SERVER is set but BIOENGINE_SERVER_URL is not")
try:
    limit = float(os.environ["BIOENGINE_WAIT_FOR_SERVER"])
except ValueError:
    sys.exit(f"BIOENGINE_WAIT_FOR_SERVER must be a number of seconds, got {os.environ['BIOENGINE_WAIT_FOR_SERVER']!r}")
deadline, problem = time.monotonic() + limit, None
while True:
    try:
        with urllib.request.urlopen(f"{url}/health/readiness", timeout=5) as response:
            if response.status == 200:
                break
    except OSError as exc:
        problem = exc
    if time.monotonic() > deadline:
        sys.exit(f"the Hypha server at {url} did not answer within {limit:g} s ({problem})")
    time.sleep(0.5)
PY
fi
exec "$@"
