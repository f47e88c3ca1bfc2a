#!/bin/sh
# Start SeaweedFS (S3 on loopback), wait for it, then run the Hypha server as PID 1 on
# 0.0.0.0:$HYPHA_PORT with the shared workspace $BIOENGINE_WORKSPACE created at start-up.
# The JWT secret is $HYPHA_JWT_SECRET, else the file $HYPHA_JWT_SECRET_FILE (the compose stack's
# secrets volume), else /data/hypha/jwt_secret (made once, mode 0600), so tokens stay valid
# across restarts. Extra arguments go to `python -m hypha.server`.
set -eu
DATA=/data
mkdir -p "$DATA/hypha" "$DATA/seaweedfs"
if [ -z "${HYPHA_JWT_SECRET:-}" ] && [ -n "${HYPHA_JWT_SECRET_FILE:-}" ]; then
  HYPHA_JWT_SECRET=$(cat "$HYPHA_JWT_SECRET_FILE")
fi
if [ -z "${HYPHA_JWT_SECRET:-}" ]; then
  if [ ! -s "$DATA/hypha/jwt_secret" ]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' >"$DATA/hypha/jwt_secret")
  fi
  HYPHA_JWT_SECRET=$(cat "$DATA/hypha/jwt_secret")
fi
export HYPHA_JWT_SECRET HYPHA_HOST=0.0.0.0
export HYPHA_WS_MSG_RATE_LIMIT="${HYPHA_WS_MSG_RATE_LIMIT:-100000}"
export HYPHA_WS_MSG_BURST_LIMIT="${HYPHA_WS_MSG_BURST_LIMIT:-100000}"

S3_PORT=8333
weed server -dir="$DATA/seaweedfs" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3 -s3.port=$S3_PORT \
  -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false -master.electionTimeout=1s \
  -master.volumeSizeLimitMB=256 -volume.max=0 >"$DATA/seaweedfs.log" 2>&1 &
python3 - <<PY
import socket, time
deadline = time.monotonic() + 60
while True:
    try:
        socket.create_connection(("127.0.0.1", $S3_PORT), 0.5).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise SystemExit("SeaweedFS did not open its S3 port within 60 s (see /data/seaweedfs.log)")
        time.sleep(0.25)
PY
exec python3 -m hypha.server --from-env \
  --startup-functions=/opt/hypha-server/bioengine_hypha_startup.py:hypha_startup \
  --enable-s3 --endpoint-url=http://127.0.0.1:$S3_PORT --access-key-id=bioengine \
  --secret-access-key=bioengine --region-name=us-east-1 --s3-admin-type=generic \
  --workspace-bucket=hypha-workspaces --database-uri=sqlite+aiosqlite:///$DATA/hypha/hypha.db "$@"
