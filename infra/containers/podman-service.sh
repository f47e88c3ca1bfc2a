#!/usr/bin/env bash
# Start podman's Docker-compatible API on a unix socket (for testcontainers and docker clients),
# unless it already answers there. Prints the process id it started (nothing when one ran).
# Usage: infra/containers/podman-service.sh SOCKET_PATH
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
socket="${1:?usage: podman-service.sh SOCKET_PATH}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
answers() { curl -fsS --unix-socket "$socket" http://d/_ping >/dev/null 2>&1; }
answers && exit 0
mkdir -p "$(dirname "$socket")"
rm -f "$socket"
nohup podman system service --time=0 "unix://$socket" >"$socket.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  answers && { echo "$pid"; exit 0; }
  kill -0 "$pid" 2>/dev/null || { cat "$socket.log" >&2; exit 1; }
  sleep 0.1
done
echo "podman system service did not answer on $socket within 10 s (see $socket.log)" >&2
exit 1
